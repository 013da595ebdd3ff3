"""A hostile history, built with the real `git`: one repository holding what real histories hold.

    hostile = build_hostile(tmp_path)      # Hostile(repo, shallow, facts)

In `hostile.repo` (branch `main` checked out):
- paths with spaces, double and single quotes, a leading dash, non-ASCII letters,
  a newline, and a non-UTF-8 byte (Latin-1 `é`); a folder with a space holding a
  Rust crate (`crates/metal backend/Cargo.toml`)
- a CRLF file, edited; a symlink; a submodule (gitlink, with .gitmodules)
- a binary file and an oversized one (over the scraper's default 1 MB max_file_size)
- a commit message that is not UTF-8 (raw Latin-1 bytes); an empty commit
- an octopus merge of three branches; an orphan branch (`pages`) with its own root
- commits reachable only from tags (one lightweight, one annotated)
- a remote `origin` with a branch that exists only there (`origin/remote-only`)
- two blobs deleted from `.git/objects` (as a pruned mirror would lack them): an old version of
  `src/lib.rs`, and `src/lost.rs` of the current tree (`git ls-tree -l` prints `BAD` as its size)

`hostile.shallow` is a `git clone --depth 3` of it, `hostile.partial` a sparse partial clone
(`git clone --filter=blob:none --sparse` over file://, both made before the blobs were deleted) whose
origin is then removed: it holds every commit and tree but only the blobs of the current tree's
top-level files, and git 2.39 dies ("could not fetch ... from promisor remote") on any other blob.
`hostile.facts` names the commits and paths the tests look for.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import GitRepo

LATIN1_NAME = b"caf\xe9.txt"  # a file name git stores as these bytes (not UTF-8)
ODD_PATHS = [
    "docs/with space.md",
    'quotes/say "hi".txt',
    "quotes/it's.txt",
    "-leading-dash.rs",
    "naïve/café.rs",
    "line\nbreak.txt",
]
CRATE_TOML = "crates/metal backend/Cargo.toml"
CRATE_LIB = "crates/metal backend/src/lib.rs"
LOST = "src/lost.rs"  # in the current tree, its blob deleted


@dataclass
class Hostile:
    repo: Path
    shallow: Path
    partial: Path
    facts: dict[str, str] = field(default_factory=dict)


def git(path: Path, *args: str, input: bytes | None = None) -> str:
    proc = subprocess.run(["git", "-C", str(path), *args], input=input, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode('utf-8', 'replace')}")
    return proc.stdout.decode("utf-8", "replace")


def build_hostile(root: Path) -> Hostile:
    root.mkdir(parents=True, exist_ok=True)
    facts: dict[str, str] = {}
    sub = GitRepo(root / "sub-src")
    sub.commit("submodule: first", {"README": "sub\n"})

    repo = GitRepo(root / "hostile")
    facts["base"] = repo.commit("base: a crate in a folder with a space", {
        CRATE_TOML: '[package]\nname = "metal-backend"\nversion = "0.1.0"\n',
        CRATE_LIB: "pub fn render() -> u32 {\n    1\n}\n",
        "src/lib.rs": "pub fn one() -> u32 {\n    1\n}\n",
        "tool/run.py": "def main():\n    return 1\n",
    })
    facts["odd_paths"] = repo.commit("odd paths", {path: f"content of {path!r}\n" for path in ODD_PATHS})
    (repo.path / os.fsdecode(LATIN1_NAME)).write_bytes(b"latin-1 name\n")
    facts["latin1_name"] = repo.commit("a file name that is not UTF-8")

    repo.write("win.txt", b"first line\r\nsecond line\r\n")
    (repo.path / "link-to-lib").symlink_to("src/lib.rs")
    facts["crlf_symlink"] = repo.commit("CRLF file and a symlink")
    repo.write("win.txt", b"first line\r\nsecond line, edited\r\nthird\r\n")
    facts["crlf_edit"] = repo.commit("edit the CRLF file")

    repo.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub.path), "deps/sub")
    facts["submodule"] = repo.commit("add a submodule")

    facts["binary_large"] = repo.commit("a binary and an oversized file", {
        "assets/blob.bin": bytes(range(256)) * 64,
        "generated/huge.rs": "".join(f"pub const C{i}: u32 = {i};\n" for i in range(48_000)),  # ~1.3 MB
    })
    # `git commit` would re-encode a Latin-1 message: the commit object is written as such
    repo.write("src/lib.rs", "pub fn one() -> u32 {\n    2\n}\n")
    repo.git("add", "-A")
    tree = repo.git("write-tree").strip()
    raw = (f"tree {tree}\nparent {repo.head()}\nauthor Bob Builder <bob@example.com> 1709251200 +0100\n"
           "committer Bob Builder <bob@example.com> 1709251200 +0100\n\n").encode()
    raw += b"caf\xe9: a message in Latin-1 without an encoding header\n"
    (root / "latin1-commit.raw").write_bytes(raw)
    facts["latin1_message"] = repo.git("hash-object", "-t", "commit", "-w", str(root / "latin1-commit.raw")).strip()
    repo.git("update-ref", "refs/heads/main", facts["latin1_message"])
    facts["empty"] = repo.commit("an empty commit", allow_empty=True)

    # an octopus merge of three branches
    for name in ("oct-a", "oct-b", "oct-c"):
        repo.checkout(name, create=True)
        facts[name] = repo.commit(f"{name}: work", {f"{name}/mod.rs": f"pub fn {name.replace('-', '_')}() {{}}\n"})
        repo.checkout("main")
    repo._tick += 1
    moment = f"@{1704067200 + 3600 * repo._tick} +0000"  # dated like GitRepo's commits: the history's order is fixed
    repo.git("merge", "-q", "--no-ff", "-m", "octopus merge", "oct-a", "oct-b", "oct-c",
             env={"GIT_AUTHOR_DATE": moment, "GIT_COMMITTER_DATE": moment})
    facts["octopus"] = repo.head()
    facts["lib_v3"] = repo.commit("lib: three", {"src/lib.rs": "pub fn one() -> u32 {\n    3\n}\n"})
    facts["lib_v4"] = repo.commit("lib: four", {"src/lib.rs": "pub fn one() -> u32 {\n    4\n}\n",
                                                 CRATE_LIB: "pub fn render() -> u32 {\n    2\n}\n"})
    facts["lost"] = repo.commit("a file whose blob is lost", {LOST: "pub fn lost() -> &'static str {\n    \"gone\"\n}\n"})

    # an orphan branch with its own root
    repo.git("checkout", "-q", "--orphan", "pages")
    repo.git("rm", "-q", "-r", "--cached", ".")
    for child in repo.path.iterdir():
        if child.name != ".git":
            subprocess.run(["rm", "-rf", str(child)], check=True)
    facts["orphan"] = repo.commit("pages: an unrelated root", {"index.html": "<h1>pages</h1>\n"})
    repo.git("checkout", "-q", "-f", "main")
    repo.git("-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init")

    # commits only tags reach
    repo.git("checkout", "-q", "--detach")
    facts["tag_only"] = repo.commit("release: bump on a detached HEAD", {"VERSION": "1.0.1\n"})
    repo.git("tag", "v1.0.1")
    facts["annotated_only"] = repo.commit("release: annotated", {"VERSION": "1.0.2\n"})
    repo.git("tag", "-a", "v1.0.2", "-m", "release 1.0.2")
    repo.git("checkout", "-q", "main")

    # a branch that exists only on the remote
    origin = root / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(origin)], check=True)
    work = GitRepo.__new__(GitRepo)  # the GitRepo helpers over a clone (GitRepo() would `git init`)
    work.path, work._tick = root / "origin-work", 500
    subprocess.run(["git", "clone", "-q", str(origin), str(work.path)], check=True)
    work.git("checkout", "-q", "-b", "remote-only")
    facts["remote_only"] = work.commit("remote-only: work nobody has locally", {"remote.rs": "fn remote() {}\n"})
    work.git("push", "-q", "origin", "remote-only")
    repo.git("remote", "add", "origin", str(origin))
    repo.git("fetch", "-q", "origin")

    shallow = root / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "3", f"file://{repo.path}", str(shallow)], check=True)

    partial = partial_clone(repo.path, root)

    # blobs lost from the object store: the third version of src/lib.rs, and a file of the current tree
    facts["deleted_blob"] = delete_blob(repo.path, f"{facts['lib_v3']}:src/lib.rs")
    facts["deleted_head_blob"] = delete_blob(repo.path, f"{facts['lost']}:{LOST}")
    return Hostile(repo.path, shallow, partial, facts)


def delete_blob(repo: Path, name: str) -> str:
    blob = git(repo, "rev-parse", name).strip()
    loose = repo / ".git" / "objects" / blob[:2] / blob[2:]
    assert loose.is_file(), "the blob to delete is packed: the fixture expects loose objects"
    loose.unlink()
    return blob


def partial_clone(source: Path, root: Path) -> Path:
    """`git clone --filter=blob:none --sparse` of `source` through a bare copy that is removed afterwards: an
    offline partial clone, every lazy fetch failing."""
    origin = root / "partial-origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(origin)], check=True)
    git(origin, "config", "uploadpack.allowFilter", "true")
    partial = root / "partial"
    subprocess.run(["git", "clone", "-q", "--filter=blob:none", "--sparse", f"file://{origin}", str(partial)],
                   check=True, capture_output=True)
    subprocess.run(["rm", "-rf", str(origin)], check=True)
    work = local_work(partial, 1500)  # after every commit of the source (the latest: 2024-03-01)
    for k in range(10):  # local work (its blobs are here): enough changes with a patch to train on
        work.commit(f"app: step {k}", {"app.py": "".join(f"def step_{j}(x):\n    return x + {j}\n\n" for j in range(k + 2))})
    return partial


def local_work(path: Path, tick: int) -> GitRepo:
    """The GitRepo helpers over an existing clone (GitRepo() would `git init`), commits dated from `tick` hours."""
    work = GitRepo.__new__(GitRepo)
    work.path, work._tick = path, tick
    for name, value in (("user.name", "Alice Example"), ("user.email", "alice@example.com"),
                        ("commit.gpgsign", "false"), ("core.autocrlf", "false")):
        work.git("config", name, value)
    return work


def missing_blobs(repo: Path, *revs: str) -> set[str]:
    """The blobs the commits (and their trees) of `revs` name that the repository lacks, as git lists them
    (without fetching)."""
    out = git(repo, "rev-list", "--objects", "--missing=print", *revs)
    return {line[1:41] for line in out.splitlines() if line.startswith("?")}
