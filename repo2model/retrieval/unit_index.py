"""The unit index: the code units of one repository's tree, embedded and searchable (the index stage's store).

    index = UnitIndex(cfg, paths.index_dir)                   # the `index` section (IndexConfig)
    summary = index.update(repo, "HEAD")                      # incremental: only changed units are embedded
    with index:
        hits = index.search("Add a retry to the scraper", mode="hybrid")
        units = index.units_of(["src/lib.rs"])

Reads a repository's tree at one revision (repo2model.git.objects: `ls_tree` + `CatFile`) and writes the index:
`<output_dir>/index/index_info.json` (what the index holds: repository, commit, tree, model, counts) and the
store itself, `<output_dir>/index/shard/` (Qdrant Edge, in-process: the default), `<output_dir>/index/qdrant/`
(qdrant-client's local mode, `index.embedded: local`) or a collection on a Qdrant server (`index.url`).

The package's other modules hold the parts: the units of a file and their payload (units), the dense vectors
(embedding), the BM25 sparse vectors (sparse), the stores (stores); what prediction builds from the index is in
context (the context pack), prompt (the prompt) and retriever (both, for predict.py and serve.py).

Incremental: a file whose blob id is unchanged is skipped; in a changed file, a unit whose id (path, kind,
symbol, ordinal) and digest are unchanged keeps its vectors and only gets its new payload (lines, blob); only
new or changed units are embedded. A run killed midway leaves a consistent store (Qdrant's WAL) that the next
run finishes, since the comparison is with the blob ids in the payloads, not with index_info.json. A file whose
blob the repository lacks (partial clone, pruned mirror) gets no unit and is counted (`missing_objects`).

Search (`UnitIndex.search`, modes):
    dense    nearest units by the task's embedding
    bm25     best units by BM25 of the task's words
    hybrid   reciprocal-rank fusion of dense and bm25, as Qdrant computes it: a unit scores the sum over the
             lists of 1 / (rank / weight + rrf_k - 1), rank 1 = first (a weight divides the rank)
    guided   RRF of four lists: dense and bm25 filtered to the predicted files and modules (weight
             `guided_weight` each) and unfiltered dense and bm25 (weight 1): units of predicted files rank
             first, other units still come in.

Locking: an embedded store is opened by one process at a time (Qdrant's own lock); readers (predict.py,
serve.py) open it on a request and close it after `keep_open_s` without one; writers (index.py) wait up to
`lock_wait_s` for it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from repo2model.code.units import ModuleLookup
from repo2model.core.artifacts import atomic_path, read_json, write_json
from repo2model.core.errors import UserError
from repo2model.core.progress import progress as progress_bar
from repo2model.git.commands import git, git_popen, open_repository
from repo2model.git.objects import CatFile, ls_tree
from repo2model.git.redact import Redactor
from repo2model.retrieval.embedding import Embedder
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.sparse import sparse_document, sparse_query, unit_words
from repo2model.retrieval.stores import DENSE, SPARSE, ClientStore, EdgeStore, Hit, Prefetch, StoredPoint
from repo2model.retrieval.units import INDEX_FORMAT, IndexUnit, indexable, units_of_file

log = logging.getLogger("index")

INFO_NAME = "index_info.json"
MODES = ("guided", "hybrid", "bm25", "dense")


@dataclass
class UpdateSummary:
    repository: str
    commit: str
    files: int  # indexable files in the tree
    files_changed: int  # files read and split again (blob changed, new)
    files_removed: int
    units: int  # points after the update
    embedded: int  # units embedded (new or changed text)
    reused: int  # units of changed files whose vectors were kept (payload refreshed)
    deleted: int
    rebuilt: str | None  # why the whole index was rebuilt, if it was
    seconds: float
    kinds: dict[str, int] = field(default_factory=dict)
    missing_objects: int = 0  # files of the tree whose blob the repository lacks (partial clone, pruned mirror)
    missing_sample: list[str] = field(default_factory=list)  # a few of their paths



class UnitIndex:
    """The code index of one repository: its store and its `index_info.json`."""

    def __init__(self, cfg: IndexConfig, folder: Path, embedder: Embedder | None = None):
        self.cfg = cfg
        self.folder = Path(folder)
        self.embedder = embedder or Embedder.from_config(cfg)
        self.info: dict = self.read_info(self.folder)
        self.store: EdgeStore | ClientStore | None = None

    @staticmethod
    def read_info(folder: Path) -> dict:
        path = Path(folder) / INFO_NAME
        return read_json(path, "index") if path.is_file() else {}

    @property
    def location(self) -> str:
        """Where the points live: the server's URL, or the embedded store's folder."""
        if self.cfg.url:
            return f"{self.cfg.url} (collection {self.cfg.collection})"
        return str(self.store_folder)

    @property
    def store_folder(self) -> Path:
        return self.folder / ("shard" if self.cfg.embedded == "edge" else "qdrant")

    def exists(self) -> bool:
        return bool(self.info) and (self.cfg.url is not None or self.store_folder.exists())

    def open_store(self, dim: int | None = None, folder: Path | None = None) -> EdgeStore | ClientStore:
        """The store (created when `dim` is given and there is none); `folder` overrides the embedded one's."""
        if self.cfg.url:
            return ClientStore.server(self.cfg, dim)
        folder = folder or self.store_folder
        if self.cfg.embedded == "edge":
            return EdgeStore(folder, dim, self.cfg.lock_wait_s)
        return ClientStore.local(folder, self.cfg.collection, dim, self.cfg.lock_wait_s)

    # ------------------------------------------------------------ building and updating

    def update(self, repo: Path, rev: str | None = None, redactor: Redactor | None = None,
               excluded: Callable[[str], bool] | None = None, rebuild: bool = False,
               progress: bool = True) -> UpdateSummary:
        """Bring the index to the tree of `rev` (default `cfg.rev`): embed only new or changed units."""
        started = time.perf_counter()
        top = open_repository(repo)
        commit = git(top, "rev-parse", "--verify", "--quiet", f"{rev or self.cfg.rev}^{{commit}}", check=False).strip()
        if not commit:
            raise UserError(f"{top}: no commit '{rev or self.cfg.rev}' (set index.rev to a branch, tag or commit)")
        why = rebuild_reason(self.info, self.embedder, self.cfg, top) if not rebuild else "asked (--rebuild)"
        if why is None and not self.exists():
            why = "no index yet"
        if why is not None:
            log.info("index: building from scratch (%s)", why)
        if why is not None and not self.cfg.url:
            # A new embedded store is built beside the old one and renamed into place when complete.
            with atomic_path(self.store_folder) as tmp:
                summary = self._update(top, commit, redactor, excluded, tmp, fresh=True, progress=progress)
        else:
            summary = self._update(top, commit, redactor, excluded, None, fresh=why is not None, progress=progress)
        summary.rebuilt = why
        summary.seconds = round(time.perf_counter() - started, 3)
        self.info = self._new_info(top, commit, summary)
        write_json(self.folder / INFO_NAME, self.info)
        return summary

    def _update(self, top: Path, commit: str, redactor, excluded, folder: Path | None, fresh: bool,
                progress: bool) -> UpdateSummary:
        model = self.embedder.identity
        tree = [e for e in ls_tree(top, commit) if e.mode != "120000" and indexable(e.path, e.size, self.cfg)
                and not (excluded and excluded(e.path))]
        store = self.open_store(self.embedder.dim, folder)
        try:
            if fresh and self.cfg.url and store.count():
                store.client.delete_collection(self.cfg.collection)
                store = ClientStore.server(self.cfg, self.embedder.dim)
            known = store.payloads(["path", "blob", "digest", "commit", "kind"])  # not the code: faster
            by_path: dict[str, dict[int, dict]] = {}
            for point_id, payload in known.items():
                by_path.setdefault(payload["path"], {})[point_id] = payload
            blobs = {e.path: e.oid for e in tree}
            changed = [e for e in tree if {p["blob"] for p in by_path.get(e.path, {}).values()} != {e.oid}]
            removed = sorted(set(by_path) - set(blobs))
            units, missing = self._read_units(top, commit, changed, redactor, progress)
            words = [unit_words(u) for u in units]
            average = self.info.get("average_length") if not fresh else None
            if average is None:  # a first build: the average unit length of this tree
                lengths = [sum(w.values()) for w in words]
                average = float(np.mean(lengths)) if lengths else 1.0
            self.average_length = average
            to_embed, embed_words, payloads, delete = [], [], {}, []
            for path in removed:
                delete.extend(by_path[path])
            new_ids: dict[str, set[int]] = {}
            for unit, unit_counts in zip(units, words):
                new_ids.setdefault(unit.path, set()).add(unit.id)
                old = by_path.get(unit.path, {}).get(unit.id)
                if old is not None and old.get("digest") == unit.digest(model):
                    unit.commit = old.get("commit")
                    payloads[unit.id] = unit.payload(model)
                else:
                    to_embed.append(unit)
                    embed_words.append(unit_counts)
            for entry in changed:
                delete.extend(i for i in by_path.get(entry.path, {}) if i not in new_ids.get(entry.path, set()))
            self._set_commits(top, commit, to_embed, self.info.get("commit") if not fresh else None)
            if to_embed:
                vectors = self.embedder.embed([u.embedding_text() for u in to_embed], progress=progress)
                store.upsert([StoredPoint(u.id, vectors[i].tolist(), sparse_document(embed_words[i], average),
                                          u.payload(model)) for i, u in enumerate(to_embed)])
            store.set_payloads(payloads)
            store.delete(delete)
            total = store.count()
        finally:
            store.close()
        kinds = Counter(p["kind"] for i, p in known.items() if i not in set(delete))
        kinds.update(u.kind for u in to_embed if u.id not in known)
        return UpdateSummary(str(top), commit, len(tree), len(changed), len(removed), total, len(to_embed),
                             len(payloads), len(delete), None, 0.0, dict(sorted(kinds.items())), len(missing),
                             missing[:10])

    def _read_units(self, top: Path, commit: str, entries: list, redactor,
                    progress: bool) -> tuple[list[IndexUnit], list[str]]:
        """The units of these files, and the files whose blob git cannot produce (they get no unit: a file
        missing at every update is read again each time, and counted each time)."""
        units: list[IndexUnit] = []
        missing: list[str] = []
        with CatFile(top) as objects:
            modules = ModuleLookup(objects.read)
            for start in progress_bar(range(0, len(entries), 256), desc="reading files", unit="batches",
                              disable=not progress or len(entries) < 512):
                group = entries[start: start + 256]
                for entry, data in zip(group, objects.read_many([e.oid for e in group])):
                    if data is None:
                        missing.append(entry.path)
                    else:
                        units += units_of_file(entry.path, data, entry.oid, self.cfg, modules, commit, redactor)
        return units, missing

    def _set_commits(self, top: Path, commit: str, units: list[IndexUnit], since: str | None) -> None:
        """Each unit's last-changed commit: the newest commit (reachable from `commit`, after `since` when given)
        that changed its file."""
        paths = {u.path for u in units}
        found = last_commits(top, commit, paths, since) if paths else {}
        missing = paths - set(found)
        if missing and since:
            found.update(last_commits(top, commit, missing, None))
        for unit in units:
            unit.commit = found.get(unit.path)

    def _new_info(self, top: Path, commit: str, summary: UpdateSummary) -> dict:
        return {
            "format": INDEX_FORMAT,
            "repository": str(top),
            "rev": self.cfg.rev,
            "commit": commit,
            "tree": git(top, "rev-parse", f"{commit}^{{tree}}").strip(),
            "store": "server" if self.cfg.url else self.cfg.embedded,
            "location": self.location,
            "model": self.embedder.name,
            "embedder": self.embedder.identity,
            "dim": self.embedder.dim,
            "max_tokens": self.cfg.max_tokens,
            "text_files": self.cfg.text_files,
            "whole_file_lines": self.cfg.whole_file_lines,
            "average_length": round(self.average_length, 6),
            "units": summary.units,
            "kinds": summary.kinds,
            "missing_objects": summary.missing_objects,
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # ------------------------------------------------------------ reading

    def __enter__(self) -> UnitIndex:
        if self.store is None:
            if not self.exists():
                raise UserError(f"{self.folder}: no code index: run the index stage (python index.py)")
            if self.info.get("embedder") != self.embedder.identity:
                raise UserError(f"{self.folder}: the index's vectors were made by {self.info.get('embedder')!r}, "
                                f"queries here by {self.embedder.identity!r}: rerun the index stage (python index.py)")
            self.store = self.open_store()
        return self

    def __exit__(self, *exc) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def search(self, query: str, mode: str = "hybrid", files: Iterable[str] = (), modules: Iterable[str] = (),
               limit: int | None = None) -> list[Hit]:
        """Units for `query` (see the module docstring for the modes); needs an open index (`with index:`)."""
        if mode not in MODES:
            raise ValueError(f"mode: one of {', '.join(MODES)}")
        limit = limit or self.cfg.search_limit
        files, modules = tuple(dict.fromkeys(files)), tuple(dict.fromkeys(modules))
        dense = self.embedder.embed([query])[0].tolist() if mode != "bm25" else None
        sparse = sparse_query(query) if mode != "dense" else None
        sparse = sparse if sparse is not None and sparse.indices else None
        lists = [Prefetch(DENSE), Prefetch(SPARSE)]
        if mode == "dense":
            lists = [Prefetch(DENSE)]
        elif mode == "bm25":
            lists = [Prefetch(SPARSE)]
        elif mode == "guided" and (files or modules):
            w = self.cfg.guided_weight
            lists = [Prefetch(DENSE, files, modules, w), Prefetch(SPARSE, files, modules, w), *lists]
        hits = self.store.query(dense, sparse, lists, limit, self.cfg.rrf_k)
        # Equal fused scores come back from the store in no fixed order: by place in the tree, so that the same
        # request always gets the same pack.
        return sorted(hits, key=lambda h: (-round(h.score, 9), str(h.payload.get("path", "")),
                                           h.payload.get("start") or 0, str(h.payload.get("symbol", ""))))

    def units_of(self, paths: Iterable[str]) -> list[IndexUnit]:
        """Every indexed unit of these files, in file order."""
        payloads = self.store.by_field("path", list(dict.fromkeys(paths)))
        return sorted((IndexUnit.from_payload(p) for p in payloads), key=lambda u: (u.path, u.start, -u.end))


def rebuild_reason(info: dict, embedder: Embedder, cfg: IndexConfig, top: Path) -> str | None:
    """Why an existing index cannot be updated in place (None: it can)."""
    if not info:
        return None
    checks = [("format", INDEX_FORMAT), ("embedder", embedder.identity), ("max_tokens", cfg.max_tokens),
              ("text_files", cfg.text_files), ("whole_file_lines", cfg.whole_file_lines),
              ("store", "server" if cfg.url else cfg.embedded), ("repository", str(top))]
    for key, value in checks:
        if info.get(key) != value:
            return f"{key} was {info.get(key)!r}, now {value!r}"
    return None


def last_commits(repo: Path, commit: str, paths: set[str], since: str | None) -> dict[str, str]:
    """For each path, the newest commit reachable from `commit` (and not from `since`) whose diff against its
    first parent touches it; one `git log --name-only` pass, stopped once every path is found."""
    wanted, found = set(paths), {}
    # `--format=%x00%H -z` gives NUL-separated fields: "", hash, "\nname", name, ..., "", hash, ...
    args = ["log", "--format=%x00%H", "--name-only", "--no-renames", "-z", commit] + ([f"^{since}"] if since else [])
    proc = git_popen(repo, args)
    current, expect_hash, buffer = None, False, b""
    try:
        while wanted:
            data = proc.stdout.read(1 << 16)
            if not data:
                break
            *fields, buffer = (buffer + data).split(b"\0")
            for raw in fields:
                if not raw:
                    expect_hash = True
                elif expect_hash:
                    current, expect_hash = raw.decode(), False
                else:
                    name = raw.lstrip(b"\n").decode("utf-8", "replace")
                    if name in wanted:
                        found[name] = current
                        wanted.discard(name)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return found


def tree_units(repo: Path, rev: str, paths: list[str], cfg: IndexConfig, redactor: Redactor | None = None,
               missing: list[str] | None = None) -> list[IndexUnit]:
    """The index units of some files of a tree, read straight from git (no index needed). Files whose blob the
    repository lacks give no unit; their paths are appended to `missing` when it is given."""
    wanted = [e for e in ls_tree(repo, rev) if e.path in set(paths) and e.mode != "120000"]
    units: list[IndexUnit] = []
    with CatFile(repo) as objects:
        modules = ModuleLookup(objects.read)
        for entry, data in zip(wanted, objects.read_many([e.oid for e in wanted])):
            if data is None:
                if missing is not None:
                    missing.append(entry.path)
            else:
                units += units_of_file(entry.path, data, entry.oid, cfg, modules, rev, redactor or Redactor())
    return units


def summary_line(summary: UpdateSummary) -> str:
    how = f"rebuilt ({summary.rebuilt})" if summary.rebuilt else "updated"
    missing = (f"; {summary.missing_objects} files left out, their blobs missing from the repository (partial "
               f"clone or pruned mirror), e.g. {summary.missing_sample[0]}" if summary.missing_objects else "")
    return (f"index: {how} at {summary.commit[:12]} in {summary.seconds:.1f}s: {summary.units} units from "
            f"{summary.files} files; {summary.files_changed} files read, {summary.embedded} units embedded, "
            f"{summary.reused} kept, {summary.deleted} removed{missing}")


def summary_dict(summary: UpdateSummary) -> dict:
    return json.loads(json.dumps(asdict(summary)))
