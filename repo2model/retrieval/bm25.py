"""Text search over code and commit messages: a code-aware word split and BM25.

    words = code_words("Fix ReadMany in src/git_io.rs::CatFile")
        # ['fix', 'read', 'many', 'readmany', 'src', 'git', 'io', 'gitio', 'rs', 'cat', 'file', 'catfile']
    index = BM25Index()
    index.add("a", word_counts(text_a)); index.add("b", word_counts(text_b))
    index.scores(code_words(task))          # {"a": 2.31, ...}: only documents that share a word
    bm25_scores(query, [doc_words, ...])    # one-shot, straight through bm25s

The word split: identifiers break at `_`, CamelCase humps and digits (`HTTPServer2` -> http, server), paths
and `::` break at their separators; words are lower-cased, English stop words and one-letter words dropped,
a plural `s` stripped (`files` -> file), and an identifier of several parts also gives its parts joined
(`read_many`, `ReadMany` and `readMany` all give `readmany`), so an exact identifier match counts more.

BM25 is Lucene's variant as bm25s computes it (`bm25s.BM25(method="lucene")`, k1 1.5, b 0.75). bm25s builds
an index over a fixed corpus; the history needs one that grows commit by commit (the commit messages before
each target) or follows the tree from commit to commit (a file's content at the target's parent), and
rebuilding bm25s's index for each of thousands of targets costs O(history^2) (110 ms per rebuild at 2,000
messages). `BM25Index` keeps the same statistics (document frequencies, lengths) incrementally and scores a
query with bm25s's own formulas; tests/test_search.py checks it against bm25s score for score.

`FileSearch` is BM25 over the files of a repository at one commit (a BM25Index of the tree), moved from commit
to commit with one long-lived `git diff-tree --stdin` (only the changed files are read, each blob's words
cached).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections import Counter, OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Hashable, Iterable, Mapping

import bm25s
import numpy as np

from repo2model.core.errors import UserError
from repo2model.git.commands import git_popen
from repo2model.git.objects import CatFile, ls_tree

K1 = 1.5  # bm25s's defaults
B = 0.75

STOP_WORDS = frozenset("""
a an the and or but if then else of to in on at by for from with without into onto over under as is are was were be
been being it its this that these those there here we you he she they them our your their my me us i do does did
done not no yes so too very can could should would will shall may might must also just only than via per about
""".split())

_WORD = re.compile(r"[A-Za-z0-9_]+")
_HUMP = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


@lru_cache(maxsize=1 << 18)
def split_identifier(word: str) -> tuple[str, ...]:
    """One identifier or word -> its search words (see the module docstring)."""
    parts = [p.lower() for piece in word.split("_") for p in _HUMP.findall(piece)]
    out = []
    for part in parts:
        if len(part) < 2 or part.isdigit() or part in STOP_WORDS:
            continue
        out.append(stem(part))
    if len(parts) > 1:
        joined = "".join(parts)
        if not joined.isdigit():
            out.append(joined)
    return tuple(out)


def stem(word: str) -> str:
    """A plural's singular, roughly (files -> file, entries -> entry); enough to match a task to code."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def code_words(text: str) -> list[str]:
    """The search words of a text (task, commit message, path, code), in order, repeats kept."""
    return [w for raw in _WORD.findall(text) for w in split_identifier(raw)]


@lru_cache(maxsize=1 << 16)
def path_words(path: str) -> tuple[str, ...]:
    """The search words of a path (cached: the same paths come back at every target)."""
    return tuple(code_words(path))


def word_counts(text: str, extra: Iterable[str] = (), extra_weight: int = 1) -> dict[str, int]:
    """Word -> count for a whole document (fast for file contents: each distinct identifier is split once);
    `extra` words (e.g. the path's) count `extra_weight` times each."""
    counts: dict[str, int] = {}
    get = counts.get
    for raw, n in Counter(_WORD.findall(text)).items():
        for word in split_identifier(raw):
            counts[word] = get(word, 0) + n
    for word in extra:
        counts[word] = get(word, 0) + extra_weight
    return counts


# ---------------------------------------------------------------- BM25


def idf(df: int, n_docs: int) -> float:
    """Lucene's BM25 idf, as bm25s's `method="lucene"`."""
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


class BM25Index:
    """Documents added and removed one at a time, scored with bm25s's Lucene BM25 over those held now.

    `add(key, counts)` (counts: word -> occurrences; a key added again replaces its document),
    `remove(key)`, `scores(query_words) -> {key: score}` for the documents sharing a word with the query
    (a repeated query word counts again, as in bm25s).

    A removed document only loses its slot (scores skip dead slots); the postings are rebuilt without the
    dead ones once they outnumber the live ones, so removing a file of the tree costs nothing per word.
    """

    def __init__(self, k1: float = K1, b: float = B):
        self.k1, self.b = k1, b
        self._slot: dict[Hashable, int] = {}
        self._keys: list[Hashable | None] = []
        self._terms: list[Mapping[str, int] | None] = []
        self._alive = np.zeros(64, dtype=bool)
        self._lengths = np.zeros(64, dtype=np.float64)
        self._postings: dict[str, dict[int, int]] = {}
        self._total = 0
        self._dead = 0

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._slot

    def keys(self) -> list:
        return list(self._slot)

    def length(self, key: Hashable) -> int:
        return int(self._lengths[self._slot[key]])

    def add(self, key: Hashable, counts: Mapping[str, int]) -> None:
        if key in self._slot:
            self.remove(key)
        slot = len(self._keys)
        self._keys.append(key)
        self._terms.append(counts)
        if slot >= len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros(len(self._lengths))])
            self._alive = np.concatenate([self._alive, np.zeros(len(self._alive), dtype=bool)])
        self._slot[key] = slot
        length = 0
        postings = self._postings
        for word, n in counts.items():
            if n > 0:
                posting = postings.get(word)
                if posting is None:
                    postings[word] = {slot: n}
                else:
                    posting[slot] = n
                length += n
        self._lengths[slot] = length
        self._alive[slot] = True
        self._total += length

    def remove(self, key: Hashable) -> None:
        slot = self._slot.pop(key)
        self._total -= int(self._lengths[slot])
        self._alive[slot] = False
        self._keys[slot] = self._terms[slot] = None
        self._dead += 1
        if self._dead > 2 * max(1024, len(self._slot)):
            self._compact()

    def _compact(self) -> None:
        """Renumber the live documents and rebuild the postings without the dead slots."""
        live = [(key, self._terms[slot]) for key, slot in self._slot.items()]
        self._slot, self._keys, self._terms, self._postings = {}, [], [], {}
        self._alive[:] = False
        self._lengths[:] = 0
        self._total = self._dead = 0
        for key, counts in live:
            self.add(key, counts)

    def scores(self, query: Iterable[str]) -> dict:
        n = len(self._slot)
        if not n:
            return {}
        average = self._total / n if self._total else 1.0
        total = np.zeros(len(self._keys), dtype=np.float64)
        for word, times in Counter(query).items():
            posting = self._postings.get(word)
            if not posting:
                continue
            slots = np.fromiter(posting.keys(), dtype=np.int64, count=len(posting))
            tf = np.fromiter(posting.values(), dtype=np.float64, count=len(posting))
            if self._dead:
                alive = self._alive[slots]
                slots, tf = slots[alive], tf[alive]
                if not len(slots):
                    continue
            norm = self.k1 * ((1 - self.b) + self.b * self._lengths[slots] / average)
            total[slots] += times * idf(len(slots), n) * tf / (norm + tf)
        return {self._keys[s]: float(total[s]) for s in np.flatnonzero(total)}


class FixedBM25:
    """bm25s over a small, fixed set of word lists: indexed once, then scored for any number of queries."""

    def __init__(self, documents: list[list[str]]):
        self.size = len(documents)
        self.retriever = None
        if any(documents):
            self.retriever = bm25s.BM25(method="lucene", k1=K1, b=B)
            self.retriever.index(documents, show_progress=False)

    def scores(self, query: list[str]) -> np.ndarray:
        out = np.zeros(self.size, dtype=np.float64)
        ids = self.retriever.get_tokens_ids(query) if self.retriever is not None and query else []
        if ids:
            out[:] = self.retriever.get_scores(ids)
        return out


def bm25_scores(query: list[str], documents: list[list[str]]) -> np.ndarray:
    """BM25 of `query` against each of a small, fixed set of word lists, straight through bm25s."""
    return FixedBM25(documents).scores(query)


# ---------------------------------------------------------------- the repository's tree


class FileSearch:
    """BM25 over the files of a repository at one commit: their blob ids, and their words in a BM25Index.

        files = FileSearch(repo)
        files.move_to(parent_hash)           # the tree at that commit (git diff-tree from the last one)
        files.search(code_words(task))       # {path: score}
        files.blobs["src/main.rs"]           # blob id of every file of the tree (indexed or not)

    A file's document is its content's words plus its path's words `path_weight` times. Binary files and
    files over `max_file_bytes` are in `blobs` but not in the search, and so are files whose blob the
    repository lacks (partial clone, pruned mirror): `missing` holds those blob ids, `missing_files()` the
    paths of the tree held now. Each blob is read and split once (kept for `cache_blobs` blobs that left the
    tree, for branches that come back to them).
    """

    def __init__(self, repo: Path | str, path_weight: int = 3, max_file_bytes: int = 300_000,
                 cache_blobs: int = 4096):
        self.repo = Path(repo)
        self.path_weight = path_weight
        self.max_file_bytes = max_file_bytes
        self.index = BM25Index()
        self.blobs: dict[str, str] = {}
        self.commit: str | None = None
        self.reads = 0
        self.missing: set[str] = set()  # blob ids git could not produce, over every tree held so far
        self._objects = CatFile(self.repo)
        self._words: OrderedDict[str, dict[str, int] | None] = OrderedDict()
        self._cache_blobs = cache_blobs
        self._diff: subprocess.Popen | None = None
        self._buffer = b""

    def __enter__(self) -> "FileSearch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._objects.close()
        if self._diff is not None:
            self._diff.stdin.close()
            self._diff.wait()
            self._diff.stdout.close()
            self._diff = None

    def search(self, query: list[str]) -> dict[str, float]:
        return self.index.scores(query)

    def has_commit(self, commit: str) -> bool:
        """Whether the repository holds this commit."""
        return self._objects.size(commit) is not None

    def missing_files(self) -> list[str]:
        """The files of the tree held now whose content is unknown (their blob is missing)."""
        return [path for path, oid in self.blobs.items() if oid in self.missing] if self.missing else []

    def read(self, path: str) -> bytes | None:
        """The content of a file of the tree held now (None: not in it, or unreadable)."""
        oid = self.blobs.get(path)
        return self._objects.read(oid) if oid else None

    def move_to(self, commit: str | None) -> None:
        """Hold the tree of `commit` (None: the empty tree, e.g. before a root commit)."""
        if commit == self.commit:
            return
        if commit is None:
            changes = [(path, None) for path in self.blobs]
        elif self.commit is None:
            changes = [(path, None) for path in self.blobs]
            changes += [(e.path, e.oid) for e in ls_tree(self.repo, commit) if e.mode != "120000"]
        else:
            changes = self._tree_diff(self.commit, commit)
        self._apply(changes)
        self.commit = commit

    def _apply(self, changes: list[tuple[str, str | None]]) -> None:
        wanted = [oid for _, oid in changes if oid is not None and oid not in self._words]
        self._load(list(dict.fromkeys(wanted)))
        for path, oid in changes:
            if path in self.index:
                self.index.remove(path)
            if oid is None:
                self.blobs.pop(path, None)
                continue
            self.blobs[path] = oid
            words = self._words.get(oid)
            if words is not None:
                document = dict(words)
                for word in path_words(path):
                    document[word] = document.get(word, 0) + self.path_weight
                self.index.add(path, document)
        self._trim()

    def _load(self, oids: list[str]) -> None:
        for oid, data in zip(oids, self._objects.read_many(oids)):
            self.reads += 1
            if data is None:
                self.missing.add(oid)
            if data is None or len(data) > self.max_file_bytes or b"\0" in data[:8192]:
                self._words[oid] = None
            else:
                self._words[oid] = word_counts(data.decode("utf-8", "replace"))

    def _trim(self) -> None:
        """Forget the words of blobs no longer in the tree, oldest first, beyond `cache_blobs`."""
        if len(self._words) <= len(self.blobs) + self._cache_blobs:
            return
        live = set(self.blobs.values())
        for oid in list(self._words):
            if len(self._words) <= len(self.blobs) + self._cache_blobs:
                break
            if oid not in live:
                del self._words[oid]

    # git diff-tree --stdin: a request "<new> <old>" answers "<new>\0" then ":<modes> <oids> <status>\0<path>\0"
    # per changed file; a second request "<old> <old>" (an empty diff, --always) marks the end.

    def _tree_diff(self, old: str, new: str) -> list[tuple[str, str | None]]:
        if self._diff is None:
            self._diff = git_popen(self.repo, ["diff-tree", "--stdin", "-r", "-z", "--no-renames", "--always"],
                                   stdin=subprocess.PIPE)
        # `old` (the tree held now) is known good: its header ends the answer, or is all of it when git
        # silently skips a `new` it does not have.
        self._diff.stdin.write(f"{new} {old}\n{old} {old}\n".encode())
        self._diff.stdin.flush()
        if self._token() == old.encode():
            raise UserError(f"{self.repo}: has no commit {new[:12]} (rewritten or pruned since the scrape?)")
        changes = []
        while True:
            token = self._token()
            if not token.startswith(b":"):
                if token != old.encode():
                    raise RuntimeError(f"git diff-tree answered {token[:60]!r} for {new}")
                return changes
            path = self._token().decode("utf-8", "replace")
            _, new_mode, _, new_oid, status = token[1:].decode().split()
            keep = status != "D" and new_mode not in ("120000", "160000")  # symlinks and submodules: no text
            changes.append((path, new_oid if keep else None))

    def _token(self) -> bytes:
        """The next NUL-terminated field of diff-tree's output."""
        while True:
            end = self._buffer.find(b"\0")
            if end >= 0:
                token, self._buffer = self._buffer[:end], self._buffer[end + 1:]
                return token
            data = os.read(self._diff.stdout.fileno(), 1 << 16)
            if not data:
                raise RuntimeError("git diff-tree stopped unexpectedly")
            self._buffer += data
