"""What commits.json's metadata and the scraper's summary count, accumulated one record at a time."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING

from repo2model.core.records import PATCH_BINARY, PATCH_FILTERED, PATCH_TOO_LARGE, PATCH_UNAVAILABLE
from repo2model.git.scraping import FORMAT_VERSION

if TYPE_CHECKING:
    from repo2model.git.refs import Refs, Repository
    from repo2model.git.scraping import Scraper, ScraperConfig


class Totals:
    """What the metadata counts, accumulated one commit at a time."""

    def __init__(self):
        self.commits = 0
        self.merges = 0
        self.authors: set[str] = set()
        self.file_changes = 0
        self.additions = 0
        self.deletions = 0
        self.redactions: Counter = Counter()
        self.skipped: Counter = Counter()
        self.truncated = 0
        self.non_utf8 = 0
        self.non_utf8_messages = 0
        self.non_utf8_paths = 0  # git's bytes were not UTF-8: the path holds U+FFFD in their place
        self.empty_commits = 0
        self.octopus_merges = 0
        self.first: tuple[datetime, str] | None = None
        self.last: tuple[datetime, str] | None = None

    def add(self, record: dict) -> None:
        self.commits += 1
        self.merges += record["is_merge"]
        self.octopus_merges += len(record["parents"]) > 2
        self.empty_commits += not record["files"] and not record["is_merge"]
        self.non_utf8_messages += bool(record.get("message_non_utf8"))
        author = record["author"]
        self.authors.add((author["email"] or author["name"]).lower())
        moment = (datetime.fromisoformat(record["authored_at"]), record["authored_at"])
        if self.first is None or moment[0] < self.first[0]:
            self.first = moment
        if self.last is None or moment[0] > self.last[0]:
            self.last = moment
        if record.get("redactions"):
            self.redactions.update(record["redactions"])
        for change in record["files"]:
            self.file_changes += 1
            self.additions += change["additions"]
            self.deletions += change["deletions"]
            if change["patch_skipped"]:
                self.skipped[change["patch_skipped"]] += 1
            self.truncated += change["truncated"]
            self.non_utf8 += change["non_utf8"]
            self.non_utf8_paths += "\ufffd" in change["path"]

    def metadata(self, repo: Repository, refs: Refs, cfg: ScraperConfig, scraper: Scraper) -> dict:
        return {
            "repository": str(repo.top),
            "refs": refs.scraped_refs,
            "ref_tips": refs.tips,
            "branches": list(refs.branches),
            "default_branch": refs.default_branch,
            "total_commits": self.commits,
            "total_merges": self.merges,
            "total_authors": len(self.authors),
            "total_file_changes": self.file_changes,
            "total_additions": self.additions,
            "total_deletions": self.deletions,
            "date_range": {"first": self.first[1] if self.first else None, "last": self.last[1] if self.last else None},
            "redactions": dict(sorted(self.redactions.items())),
            "patches_skipped": {k: self.skipped.get(k, 0) for k in (PATCH_BINARY, PATCH_TOO_LARGE, PATCH_FILTERED, PATCH_UNAVAILABLE)},
            "unavailable_files": self.skipped.get(PATCH_UNAVAILABLE, 0),
            "truncated_patches": self.truncated,
            "non_utf8_patches": self.non_utf8,
            "non_utf8_messages": self.non_utf8_messages,
            "non_utf8_paths": self.non_utf8_paths,
            "empty_commits": self.empty_commits,
            "octopus_merges": self.octopus_merges,
            # a shallow clone: these commits' parents are not in the repository (their diffs add every file)
            "shallow_boundary": repo.shallow_boundary(),
            "settings": {
                "skip_merges": cfg.skip_merges, "detect_renames": cfg.detect_renames,
                "file_filters": cfg.file_filters, "exclude_globs": cfg.exclude_globs,
                "max_file_size": cfg.max_file_size, "max_patch_bytes": cfg.max_patch_bytes,
                "redact_secrets": cfg.redact_secrets,
                # the semantic chunker redacts the file versions it reads with the same rules
                "redact_patterns": cfg.redact_patterns, "redact_allowlist": cfg.redact_allowlist,
            },
            "git_version": repo.version,
            "format_version": FORMAT_VERSION,
            "scrape_digest": scraper.digest,
        }

    def summary(self, seconds: float, reused: int, missing: set[str]) -> dict:
        return {
            "commits": self.commits,
            "reused_commits": reused,
            "authors": len(self.authors),
            "file_changes": self.file_changes,
            "redactions": sum(self.redactions.values()),
            "redactions_by_type": dict(sorted(self.redactions.items())),
            "unavailable_files": self.skipped.get(PATCH_UNAVAILABLE, 0),
            "missing_objects": len(missing),
            "seconds": round(seconds, 3),
        }
