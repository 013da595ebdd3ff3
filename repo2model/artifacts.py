"""Reading and writing the pipeline's artifacts: atomically, and one record at a time.

Every writer goes through `atomic_path`: the data goes to a temporary file in
the same folder, which is renamed over the target only when complete, so a
killed stage leaves the previous artifact (or none), never a truncated one.

`commits.json` layout (valid JSON for `json.load`, and one commit per line so
that `iter_commits` reads it in constant memory):

    {"metadata": {...},
    "commits": [
    {...commit 1...},
    {...commit 2...}
    ]}
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from repo2model.errors import UserError, first_line
from repo2model.records import Chunk, Commit

# Which stage produces each artifact, for "run stage X first" messages.
PRODUCED_BY = {
    "commits.json": "git_scraper",
    "chunks.jsonl": "semantic_chunker",
    "vocab.json": "tokenizer",
    "tokens.pt": "tokenizer",
    "tokenizer": "tokenizer",
    "training_data_train.pt": "dataset_builder",
    "training_data_val.pt": "dataset_builder",
    "training_data_test.pt": "dataset_builder",
    "model": "train_model",
}


def require(path: Path, stage: str | None = None) -> Path:
    """Return `path` if it exists, else a UserError naming the stage that makes it."""
    path = Path(path)
    if not path.exists():
        stage = stage or PRODUCED_BY.get(path.name)
        hint = f": run the {stage} stage first (python pipeline.py --stage {stage})" if stage else ""
        raise UserError(f"{path}: not found{hint}")
    return path


@contextlib.contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success.

    Works for files and folders (a folder target is replaced whole). On an
    exception the temporary is removed and `target` is untouched.
    """
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{parent}: cannot create output folder ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"{parent}: output folder is not writable")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(target: Path | str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """`open()` for writing that only replaces `target` once the block completes."""
    with atomic_path(target) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: Path | str, obj: Any, indent: int | None = 2) -> Path:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=indent, ensure_ascii=False, sort_keys=False)
        fh.write("\n")
    return Path(path)


def read_json(path: Path | str, stage: str | None = None) -> Any:
    path = require(Path(path), stage)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None


# ---------------------------------------------------------------- JSON lines


def write_jsonl(path: Path | str, records: Iterable[Any]) -> int:
    """Write records (dicts or dataclasses with `to_dict`) one per line; returns the count."""
    count = 0
    with atomic_open(path) as fh:
        for record in records:
            if hasattr(record, "to_dict"):
                record = record.to_dict()
            fh.write(json.dumps(record, ensure_ascii=False))
            fh.write("\n")
            count += 1
    return count


def iter_jsonl(path: Path | str, stage: str | None = None) -> Iterator[dict]:
    path = require(Path(path), stage)
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if not line.endswith("\n"):
                raise UserError(f"{path}: truncated at line {lineno}: rerun the stage that writes it")
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: corrupt line {lineno} ({exc.msg})") from None


def iter_chunks(path: Path | str) -> Iterator[Chunk]:
    for record in iter_jsonl(path, "semantic_chunker"):
        yield Chunk.from_dict(record)


# ---------------------------------------------------------------- commits.json

_COMMITS_OPEN = '"commits": ['
_COMMITS_CLOSE = "]}"


class CommitsWriter:
    """Writes `commits.json` one commit at a time; metadata is given at the end.

    Commits are spooled to a temporary file so that the metadata (which counts
    them) can come first in the final file; the final file is then assembled and
    renamed into place atomically.

        with CommitsWriter(path) as writer:
            for commit in commits:
                writer.add(commit)
            writer.metadata = {...}
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.metadata: dict | None = None
        self.count = 0
        self._spool: IO[str] | None = None

    def __enter__(self) -> "CommitsWriter":
        self._atomic = atomic_open(self.path)
        self._spool = tempfile.TemporaryFile("w+", encoding="utf-8", dir=self._spool_dir())
        return self

    def _spool_dir(self) -> Path:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.path.parent}: cannot create output folder ({exc.strerror})") from None
        return self.path.parent

    def add(self, commit: Commit | dict) -> None:
        record = commit.to_dict() if isinstance(commit, Commit) else commit
        if self.count:
            self._spool.write(",\n")
        self._spool.write(json.dumps(record, ensure_ascii=False))
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        spool, self._spool = self._spool, None
        try:
            if exc_type is not None:
                return
            if self.metadata is None:
                raise RuntimeError("CommitsWriter closed without metadata")
            with self._atomic as fh:
                fh.write('{"metadata": ' + json.dumps(self.metadata, ensure_ascii=False) + ",\n")
                fh.write(_COMMITS_OPEN + "\n")
                spool.seek(0)
                shutil.copyfileobj(spool, fh, 1 << 20)
                fh.write("\n" if self.count else "")
                fh.write(_COMMITS_CLOSE + "\n")
        finally:
            spool.close()


def read_commits_metadata(path: Path | str) -> dict:
    """The metadata of a `commits.json`, read from its first line."""
    path = require(Path(path), "git_scraper")
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    prefix = '{"metadata": '
    if not first.startswith(prefix) or not first.rstrip().endswith(","):
        raise UserError(f"{path}: not a commits.json written by git_scraper: rerun the git_scraper stage")
    try:
        return json.loads(first[len(prefix):].rstrip().rstrip(","))
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupt metadata line: rerun the git_scraper stage") from None


def iter_commit_dicts(path: Path | str) -> Iterator[dict]:
    """Commits of a `commits.json` as dicts, one at a time, in file order."""
    path = require(Path(path), "git_scraper")
    with open(path, encoding="utf-8") as fh:
        fh.readline()  # metadata
        if fh.readline().rstrip("\n") != _COMMITS_OPEN:
            raise UserError(f"{path}: not a commits.json written by git_scraper: rerun the git_scraper stage")
        for lineno, line in enumerate(fh, 3):
            line = line.rstrip("\n")
            if line == _COMMITS_CLOSE:
                return
            try:
                yield json.loads(line.rstrip(","))
            except json.JSONDecodeError:
                break
        raise UserError(f"{path}: truncated or corrupt near line {lineno}: rerun the git_scraper stage")


def iter_commits(path: Path | str) -> Iterator[Commit]:
    for record in iter_commit_dicts(path):
        yield Commit.from_dict(record)


def iter_commits_with_chunks(commits_path: Path | str, chunks_path: Path | str) -> Iterator[tuple[dict, list[dict]]]:
    """Each commit of `commits.json` (a dict) with its chunks from `chunks.jsonl`, streaming both.

    Both files are in the commits' order (chunks grouped by commit); a chunk whose
    commit is not next in `commits.json` means the two files do not belong together.
    """
    require(Path(commits_path), "git_scraper")
    chunks = iter_jsonl(chunks_path, "semantic_chunker")
    pending = next(chunks, None)
    for commit in iter_commit_dicts(commits_path):
        group: list[dict] = []
        while pending is not None and pending["commit"] == commit["hash"]:
            group.append(pending)
            pending = next(chunks, None)
        yield commit, group
    if pending is not None:
        raise UserError(
            f"{chunks_path}: chunk of commit {pending['commit'][:12]} is not in {commits_path} in that order: "
            "the two files do not belong together (rerun the semantic_chunker stage)"
        )


# ---------------------------------------------------------------- torch artifacts


def save_pt(obj: Any, path: Path | str) -> Path:
    """`torch.save` atomically. Only tensors and plain containers belong in `obj`."""
    import torch

    with atomic_path(path) as tmp:
        # through a file object: torch names the archive inside after a path's (random temp) name,
        # which would make the same data give different bytes each run
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
    return Path(path)


def load_pt(path: Path | str, stage: str | None = None) -> Any:
    """`torch.load(weights_only=True)` with one-line errors for missing or corrupt files."""
    import pickle

    import torch

    path = require(Path(path), stage)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise UserError(f"{path}: corrupt or unsafe .pt file ({first_line(exc, 120)}): rerun the stage that writes it") from None


def file_sizes(paths: Iterable[Path]) -> dict[str, int]:
    """{path: bytes} for the files (and folders, summed) that exist."""
    sizes = {}
    for path in paths:
        path = Path(path)
        if path.is_file():
            sizes[str(path)] = path.stat().st_size
        elif path.is_dir():
            sizes[str(path)] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return sizes
