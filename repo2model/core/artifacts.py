"""Reading and writing the pipeline's artifacts: atomically, and one record at a time.

Every writer goes through `atomic_path`: the data goes to a temporary file in
the same folder (`.NAME.XXXXXXXX.tmp`), which is renamed over the target only
when complete, so a killed stage leaves the previous artifact (or none), never a
truncated one. `remove_stale_temporaries(folder)` removes what a killed run left.

A path ending in `.zst` is zstd-compressed: `atomic_open` compresses what is
written to it, and `open_text` (used by `read_json`, `iter_jsonl`,
`iter_commit_dicts`, `read_commits_metadata`) decompresses it, streaming, so
stage code is the same for `commits.json` and `commits.json.zst`
(`pipeline.compress` picks the names through `ArtifactPaths`). A cut-off or
corrupt compressed file is a one-line UserError, like a cut-off plain one.

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
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import zstandard

from repo2model.core.errors import UserError, first_line
from repo2model.core.records import Chunk, Commit

# zstd's default level: on JSON patches about a quarter of the size at a few hundred MB/s on one core.
ZSTD_LEVEL = 3
ZSTD_SUFFIX = ".zst"

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


def is_compressed(path: Path | str) -> bool:
    return str(path).endswith(ZSTD_SUFFIX)


def compressed_twin(path: Path | str) -> Path:
    """`commits.json` <-> `commits.json.zst`: the same artifact in the other format."""
    path = Path(path)
    return path.with_name(path.name[: -len(ZSTD_SUFFIX)] if is_compressed(path) else path.name + ZSTD_SUFFIX)


def producer(path: Path | str) -> str | None:
    """The stage that writes the artifact `path` (by its file name), if known."""
    name = Path(path).name
    return PRODUCED_BY.get(name[: -len(ZSTD_SUFFIX)] if is_compressed(name) else name)


def require(path: Path, stage: str | None = None) -> Path:
    """Return `path` if it exists, else a UserError naming the stage that makes it."""
    path = Path(path)
    if not path.exists():
        stage = stage or producer(path)
        hint = f": run the {stage} stage first (python pipeline.py --stage {stage})" if stage else ""
        twin = compressed_twin(path)
        if twin.exists():  # the same artifact in the other format: pipeline.compress changed since it was made
            hint = f" ({twin.name} is there: pipeline.compress differs from the run that wrote it){hint}"
        raise UserError(f"{path}: not found{hint}")
    return path


def ensure_folder(folder: Path | str) -> Path:
    """Create `folder` (and its parents) or raise a one-line UserError saying why not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{folder}: cannot create output folder (a file of that name is in the way)") from None
    except OSError as exc:
        raise UserError(f"{folder}: cannot create output folder ({exc.strerror})") from None
    return folder


@contextlib.contextmanager
def atomic_path(target: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` on success.

    Works for files and folders (a folder target is replaced whole). On an
    exception the temporary is removed and `target` is untouched.
    """
    target = Path(target)
    parent = ensure_folder(target.parent)
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
    """`open()` for writing that only replaces `target` once the block completes.

    A `target` ending in `.zst` is written zstd-compressed (one frame, with a
    checksum; the same data gives the same bytes).
    """
    with atomic_path(target) as tmp:
        if not is_compressed(target):
            with open(tmp, mode, **({} if "b" in mode else {"encoding": encoding, "newline": "\n"})) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            return
        with open(tmp, "wb") as raw:
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
            writer = compressor.stream_writer(raw, closefd=False)
            try:
                if "b" in mode:
                    yield writer
                else:
                    text = io.TextIOWrapper(writer, encoding=encoding, newline="\n")
                    yield text
                    text.flush()
            finally:
                writer.close()  # ends the frame; `raw` stays open (closefd=False)
            raw.flush()
            os.fsync(raw.fileno())


def check_zstd_frames(fh: IO[bytes]) -> None:
    """Walk the frame and block headers of a zstd file; ZstdError if it is cut off or not zstd.

    Needed because zstd's stream reader takes a file cut off between two blocks
    for a shorter complete one. Reads 3 bytes per block (~128 KiB of data), so
    it is cheap; the decompressor checks the contents (and checksum) itself.
    """
    end = fh.seek(0, os.SEEK_END)
    if end == 0:
        raise zstandard.ZstdError("empty file")
    position = 0
    while position < end:
        fh.seek(position)
        head = fh.read(18)  # the longest frame header
        position += zstandard.frame_header_size(head)
        has_checksum = zstandard.get_frame_parameters(head).has_checksum
        while True:
            fh.seek(position)
            block = fh.read(3)
            if len(block) < 3:
                raise zstandard.ZstdError("the file ends inside a frame (cut off)")
            header = int.from_bytes(block, "little")
            kind, size = (header >> 1) & 3, header >> 3
            if kind == 3:
                raise zstandard.ZstdError(f"reserved block type at byte {position}")
            position += 3 + (1 if kind == 1 else size)  # kind 1 (RLE): one byte repeated `size` times
            if header & 1:  # the frame's last block
                break
        position += 4 if has_checksum else 0
    if position != end:
        raise zstandard.ZstdError("the file ends inside a frame (cut off)")
    fh.seek(0)


@contextlib.contextmanager
def open_text(path: Path | str) -> Iterator[IO[str]]:
    """Open an artifact for reading as UTF-8 text, decompressing a `.zst` one on the fly.

    Corrupt compressed data (also when found later, while the caller reads)
    becomes a one-line UserError naming the file and the stage that writes it.
    """
    path = Path(path)
    if not is_compressed(path):
        with open(path, encoding="utf-8") as fh:
            yield fh
        return
    try:
        with open(path, "rb") as raw:
            check_zstd_frames(raw)
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 16, read_across_frames=True)
            with io.TextIOWrapper(io.BufferedReader(reader, 1 << 16), encoding="utf-8") as fh:
                yield fh
    except zstandard.ZstdError as exc:
        stage = producer(path)
        fix = f": rerun the {stage} stage" if stage else ""
        raise UserError(f"{path}: corrupt or cut-off zstd data ({first_line(exc)}){fix}") from None


def write_json(path: Path | str, obj: Any, indent: int | None = 2) -> Path:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=indent, ensure_ascii=False, sort_keys=False)
        fh.write("\n")
    return Path(path)


def read_json(path: Path | str, stage: str | None = None) -> Any:
    path = require(Path(path), stage)
    try:
        with open_text(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None


# ---------------------------------------------------------------- stale temporaries

# What atomic_path leaves behind when its process is killed: `.NAME.XXXXXXXX.tmp[SUFFIX]` (mkstemp's
# eight random characters) and, while a folder is being swapped, `.NAME.old-PID`.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}\.tmp(?:\.[\w.-]*)?|old-\d+)$")


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Remove the temporaries `atomic_path` left in `folder` (not below it); returns what was removed.

    Only names of that exact shape are touched. Call it when no other process
    is writing to `folder` (the pipeline holds a lock on its output folder).
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if not _TEMPORARY.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# ---------------------------------------------------------------- JSON lines


def write_jsonl(path: Path | str, records: Iterable[Any]) -> int:
    """Write records (dicts or dataclasses with `to_dict`) one per line, atomically; returns the count.

    For JSON-lines artifacts built from records in memory (test fixtures, bench
    scripts); the chunker streams already-serialised lines through `atomic_open`.
    """
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
    """The records of a JSON-lines file (plain or `.zst`), one at a time."""
    path = require(Path(path), stage)
    with open_text(path) as fh:
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
    """Every chunk of a `chunks.jsonl` as a `Chunk`; readers that keep few of them convert only those."""
    for record in iter_jsonl(path, "semantic_chunker"):
        yield Chunk.from_dict(record)


# ---------------------------------------------------------------- commits.json

_COMMITS_OPEN = '"commits": ['
_COMMITS_CLOSE = "]}"


class CommitsWriter:
    """Writes `commits.json` (or `commits.json.zst`) one commit at a time; metadata is given at the end.

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
        return ensure_folder(self.path.parent)

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
    with open_text(path) as fh:
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
    with open_text(path) as fh:
        fh.readline()  # metadata
        if fh.readline().rstrip("\n") != _COMMITS_OPEN:
            raise UserError(f"{path}: not a commits.json written by git_scraper: rerun the git_scraper stage")
        for lineno, line in enumerate(fh, 3):
            line = line.rstrip("\n")
            if line == _COMMITS_CLOSE:
                if fh.read().strip():  # reading to the end also checks a compressed file's checksum
                    break
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
