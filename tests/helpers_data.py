"""Records and artifacts for the tokenizer / dataset-builder tests.

`history_records()` builds Commit/Chunk records by hand (for the parts that need
tricky content no chunker would produce on a tiny repository); `write_history`
writes them as `commits.json` + `chunks.jsonl` with the project's own writers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from repo2model.core.artifacts import CommitsWriter, write_jsonl
from repo2model.core.records import Chunk, Commit, FileChange, Person


def sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def commit(
    name: str,
    parents: list[str] | None = None,
    author: str = "Alice Example",
    when: str = "2024-01-01T10:00:00+00:00",
    committed: str | None = None,
    message: str | None = None,
    merge: bool = False,
    first_parent: bool = True,
) -> Commit:
    return Commit(
        hash=sha(name),
        parents=parents or [],
        author=Person(author, f"{author.split()[0].lower()}@example.com"),
        committer=Person(author, f"{author.split()[0].lower()}@example.com"),
        authored_at=when,
        committed_at=committed or when,
        message=message if message is not None else f"{name}: change things",
        branches=["main"],
        on_default_first_parent=first_parent,
        is_merge=merge,
        files=[FileChange("x", None, "M", 1, 1, False, None, None, "@@ -1 +1 @@\n-a\n+b\n")],
    )


def chunk(
    owner: Commit,
    file: str,
    change_type: str,
    symbol: str | None,
    after: str | None = None,
    diff: str = "+x\n",
    module: str | None = None,
    old_file: str | None = None,
    before: str | None = None,
    old_symbol: str | None = None,
) -> Chunk:
    kind = change_type.split("_", 1)[1].lower()
    return Chunk(
        commit=owner.hash,
        timestamp=owner.authored_at,
        author=owner.author.name,
        file=file,
        language="rust" if file.endswith(".rs") else "text",
        module=module,
        kind=kind,
        symbol=symbol,
        change_type=change_type,
        before=before,
        after=after,
        diff=diff,
        old_file=old_file,
        old_symbol=old_symbol,
    )


def tricky_commit() -> tuple[Commit, list[Chunk]]:
    """One commit whose text spells our tokens, lacks final newlines, and uses every field."""
    c = commit(
        "tricky",
        author="Zoë <Quoted> Name",
        message="Fix <FILE> parsing of <CHANGE:new_function> and <\u2060MSG>\n\nBody line <COMMIT_END>\n",
    )
    chunks = [
        chunk(c, "crates/core/src/market.rs", "NEW_FUNCTION", "Market::settle",
              after="pub fn settle<T>(x: Vec<T>) {\n    let s = \"<COMMIT_START>\";\n}", module="core::market"),
        chunk(c, "crates/core/src/market.rs", "MODIFIED_METHOD", "Market::open",
              diff=" fn open() {\n-    old();\n+    new();\n }\n", module="core::market"),
        chunk(c, "crates/core/src/market.rs", "DELETED_TEST", "tests::gone", before="fn gone() {}\n", module="core::market"),
        chunk(c, "crates/net/src/lib.rs", "MOVED_STRUCT", "Peer", diff="+struct Peer;\n", module="net", old_file="crates/core/src/peer.rs"),
        chunk(c, "crates/net/src/lib.rs", "RENAMED_FUNCTION", "connect", diff="-fn dial() {}\n+fn connect() {}\n",
              module="net", old_symbol="dial", old_file="crates/net/src/old.rs"),
        chunk(c, "README.md", "MODIFIED_HUNK", None, diff="-old\n+new <TASK>\n\\ No newline at end of file\n"),
        chunk(c, "src/tool.py", "NEW_FUNCTION", "tool.main",
              after="def main():\n    pass\n\n", module="pkg.tool"),
    ]
    chunks[-1].change_type = "NEW_GADGET"  # a change type the language has no token for
    return c, chunks


def linear_history(n: int, start_day: int = 1) -> list[tuple[Commit, list[Chunk]]]:
    """n commits in a line (up to 336), each touching one or two files, dates a day apart."""
    pairs = []
    parent = None
    authors = ["Alice Example", "Bob Builder", "Carol Coder"]
    for i in range(n):
        day = start_day + i
        c = commit(
            f"c{i}",
            parents=[parent.hash] if parent else [],
            author=authors[i % 3],
            when=f"2024-{1 + (day - 1) // 28:02d}-{1 + (day - 1) % 28:02d}T10:00:00+00:00",  # 28-day months: always a real date
            message=f"Change number {i}: update module m{i % 4}",
        )
        chunks = [chunk(c, f"crates/m{i % 4}/src/lib.rs", "NEW_FUNCTION", f"f{i}",
                        after=f"pub fn f{i}(x: u64) -> u64 {{\n    x + {i}\n}}\n", module=f"m{i % 4}::lib")]
        if i % 2:
            chunks.append(chunk(c, "README.md", "MODIFIED_HUNK", None, diff=f"-line {i - 1}\n+line {i}\n"))
        pairs.append((c, chunks))
        parent = c
    return pairs


def write_history(folder: Path, pairs: list[tuple[Commit, list[Chunk]]]) -> tuple[Path, Path]:
    """commits.json and chunks.jsonl under `folder`, as the earlier stages write them."""
    folder.mkdir(parents=True, exist_ok=True)
    commits_path, chunks_path = folder / "commits.json", folder / "chunks.jsonl"
    with CommitsWriter(commits_path) as writer:
        for c, _ in pairs:
            writer.add(c)
        writer.metadata = {"total_commits": len(pairs), "total_authors": len({c.author.name for c, _ in pairs})}
    write_jsonl(chunks_path, [ch for _, chunks in pairs for ch in chunks])
    return commits_path, chunks_path


# ------------------------------------------------------------------ a real fixture history


def day(n: float) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime(2024, 3, 1, tzinfo=timezone.utc) + timedelta(days=n)).isoformat()


CORE_LIB = "pub mod market;\n\npub fn add(a: u64, b: u64) -> u64 {\n    a + b\n}\n"


def build_fixture_repo(repo) -> dict[str, str]:
    """A Rust workspace + Python tool with interleaved branches, merges and skewed dates.

    Returns {label: commit hash}. `skewed_author` has an author date years in the
    past (a rebase keeps it); `clock_behind` has a commit date before its parent's.
    """
    h = {}
    h["root"] = repo.commit("Create the core crate", {
        "Cargo.toml": '[workspace]\nmembers = ["crates/core", "crates/net"]\n',
        "crates/core/Cargo.toml": '[package]\nname = "core"\nversion = "0.1.0"\n',
        "crates/core/src/lib.rs": CORE_LIB,
        "crates/core/src/market.rs": "pub struct Market {\n    pub open: bool,\n}\n",
    }, date=day(0))
    h["tool"] = repo.commit("Add the report tool", {"tools/report.py": "def main():\n    print('report')\n"},
                            author=("Bob Builder", "bob@example.com"), date=day(1))
    repo.checkout("feature", create=True)
    h["f1"] = repo.commit("Add Market::settle", {
        "crates/core/src/market.rs": "pub struct Market {\n    pub open: bool,\n}\n\nimpl Market {\n"
                                     "    pub fn settle(&mut self) {\n        self.open = false;\n    }\n}\n"}, date=day(2))
    repo.checkout("main")
    h["m1"] = repo.commit("Net crate with a peer type", {
        "crates/net/Cargo.toml": '[package]\nname = "net"\nversion = "0.1.0"\n',
        "crates/net/src/lib.rs": "pub struct Peer {\n    pub id: u64,\n}\n\npub fn dial(id: u64) -> Peer {\n    Peer { id }\n}\n"},
        author=("Carol Coder", "carol@example.com"), date=day(3))
    repo.checkout("feature")
    h["f2"] = repo.commit("Test settle", {
        "crates/core/src/market.rs": "pub struct Market {\n    pub open: bool,\n}\n\nimpl Market {\n"
                                     "    pub fn settle(&mut self) {\n        self.open = false;\n    }\n}\n\n"
                                     "#[cfg(test)]\nmod tests {\n    #[test]\n    fn settles() {\n        assert!(true);\n    }\n}\n"},
        date=day(4))
    repo.checkout("main")
    h["merge"] = repo.merge("feature", "Merge branch 'feature'", date=day(5))
    h["skewed_author"] = repo.commit("Rebased fix with an old author date", {
        "tools/report.py": "def main():\n    print('report v2')\n\n\ndef summary(rows):\n    return len(rows)\n"},
        author=("Bob Builder", "bob@example.com"), date="2019-06-01T12:00:00+00:00", committer_date=day(6))
    h["clock_behind"] = repo.commit("Commit from a machine whose clock is behind", {
        "crates/net/src/lib.rs": "pub struct Peer {\n    pub id: u64,\n}\n\npub fn connect(id: u64) -> Peer {\n    Peer { id }\n}\n"},
        author=("Carol Coder", "carol@example.com"), date=day(0.5), committer_date=day(0.5))
    for i in range(10):
        body = "".join(f"pub fn f{j}(x: u64) -> u64 {{\n    x * {j + 2}\n}}\n\n" for j in range(i + 1))
        h[f"lin{i}"] = repo.commit(f"Add f{i} to the net crate", {"crates/net/src/extra.rs": body},
                                   author=[("Alice Example", "alice@example.com"), ("Bob Builder", "bob@example.com")][i % 2],
                                   date=day(7 + i))
    repo.commit("Binary asset only", {"assets/logo.bin": bytes(range(256))}, date=day(17))
    return h


def scrape_and_chunk(repo_path: Path, out: Path):
    """Run the real git_scraper and semantic_chunker stages; returns the ArtifactPaths."""
    from repo2model.stages import git_scraper
    from repo2model.stages import semantic_chunker
    from repo2model.core.paths import ArtifactPaths

    paths = ArtifactPaths.under(out)
    git_scraper.run(git_scraper.Config(repo=repo_path), paths)
    semantic_chunker.run(semantic_chunker.Config(workers=1), paths, repo=repo_path)
    return paths
