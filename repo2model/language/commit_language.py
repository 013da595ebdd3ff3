"""The commit language: how a commit is written as text, defined once for every stage.

Stages 3 (tokenizer), 4 (dataset builder), training and prediction all read and
write commits through this module, so the special tokens, the rendering and the
parser cannot drift apart.

Rendering (`render_commit(commit, chunks, form="full")`):

    <COMMIT_START><AUTHOR:Alice Example><DATE>2024-01-02
    <MSG>Settle markets at the close
    <FILE>crates/core/src/market.rs<MODULE:core>::market
    <CHANGE:new_function>Market::settle
    <CODE>pub fn settle(&mut self) {}

    <CHANGE:modified_method>Market::open
    <DIFF> fn open() {
    -    old();
    +    new();
     }

    <COMMIT_END>

- Header: the author as `<AUTHOR:name>` for the K most frequent authors, else
  `<AUTHOR>name` spelled out; the author date (day); the message after `<MSG>`.
- Per file (in the chunks' order): `<FILE>path`, then the module: `<MODULE:top>rest`
  when the module's top segment (Rust crate / Python package) is one of the K
  most frequent, else `<MODULE>module`; nothing when the file has no module.
- Per chunk: `<CHANGE:new_function>` (one token per change type in
  `records.ALL_CHANGE_TYPES`; an unknown type is spelled `<CHANGE>TYPE`), the
  symbol, `<WAS>old_name` for renamed units, `<FROM>old_file` for moved ones; then the code: `<CODE>` + the unit's
  new code for NEW_* changes, `<DIFF>` + its own changed lines for the rest,
  nothing for DELETED_* changes.
- Every free-text field (message, path, symbol, code) is followed by one
  newline that the parser strips, so text ending with or without a newline
  survives exactly. Text that happens to spell one of our tokens (this very
  file, say) is escaped with a word joiner (U+2060) after the `<`, which the
  parser removes. A one-line field (path, module, symbol, old name) holding a
  newline writes it as `␤n` (U+2424, n), and a `␤` as `␤␤`; nothing else is touched.
- The compact form (for history) is the same without the code blocks, and with at
  most `compact_max_files` files and `compact_max_changes` change lines (later files
  keep their path line; `<TRUNCATED>` marks what was left out).

Training example (`build_prompt` + the target, see `dataset_builder.py`):

    <BOS> compact rendering of the previous N commits, oldest first
    <TASK>the target commit's message
    ---- target (the only positions with labels) ----
    <FILE>...<CHANGE:...>...<CODE>... [<TRUNCATED>] <COMMIT_END>\\n <EOS>

The commit language object (`CommitLanguage`) carries the chosen author and
module families and is saved as `commit_language.json` in the tokenizer folder.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from repo2model.core.artifacts import iter_commit_dicts, iter_commits_with_chunks, iter_jsonl, require, write_json
from repo2model.core.errors import UserError
from repo2model.core.records import ALL_CHANGE_TYPES, Chunk, Commit, shape_error

LANGUAGE_FILE = "commit_language.json"
FORMAT_VERSION = 1

PAD = "<PAD>"
BOS = "<BOS>"
EOS = "<EOS>"

COMMIT_START = "<COMMIT_START>"
COMMIT_END = "<COMMIT_END>"
AUTHOR = "<AUTHOR>"  # followed by a name spelled out (not among the top K)
DATE = "<DATE>"
MSG = "<MSG>"
FILE = "<FILE>"
MODULE = "<MODULE>"  # followed by a module spelled out
CHANGE = "<CHANGE>"  # followed by a change type we have no token for
FROM = "<FROM>"  # a moved unit's old file
WAS = "<WAS>"  # a renamed unit's old name
CODE = "<CODE>"
DIFF = "<DIFF>"
TASK = "<TASK>"
TRUNCATED = "<TRUNCATED>"

STRUCTURE_TOKENS = (COMMIT_START, COMMIT_END, AUTHOR, DATE, MSG, FILE, MODULE, CHANGE, FROM, WAS, CODE, DIFF, TASK, TRUNCATED)
CHANGE_TOKENS = tuple(f"<CHANGE:{c.lower()}>" for c in ALL_CHANGE_TYPES)

_STRUCTURE_NAMES = "|".join(t[1:-1] for t in STRUCTURE_TOKENS + (PAD, BOS, EOS))
# Anything in free text that spells one of our tokens (or a family prefix): escaped on render.
_ESCAPE_RE = re.compile(r"<(?=(?:" + _STRUCTURE_NAMES + r")>|(?:CHANGE|AUTHOR|MODULE):)")
_ESC = "\u2060"
_UNESCAPE_RE = re.compile("<" + _ESC + "(" + _ESC + "?)")
# The tokens as the parser sees them.
_TOKEN_RE = re.compile(r"(<(?:" + _STRUCTURE_NAMES + r")>|<(?:CHANGE|AUTHOR|MODULE):[^<>\n]*>)")

MAX_FAMILY_NAME = 64


def escape(text: str) -> str:
    """Make free text unable to spell a token: `<FILE>` -> `<\\u2060FILE>` (reversible)."""
    if "<" not in text:
        return text
    text = text.replace("<" + _ESC, "<" + _ESC + _ESC)
    return _ESCAPE_RE.sub("<" + _ESC, text)


def unescape(text: str) -> str:
    if _ESC not in text:
        return text
    return _UNESCAPE_RE.sub(lambda m: "<" + m.group(1), text)


_NL = "\u2424"  # SYMBOL FOR NEWLINE: a newline inside a one-line field (a path, a symbol) is ␤n, a ␤ is ␤␤
_LINE_UNESCAPE_RE = re.compile(_NL + "([" + _NL + "n])")


def escape_line(text: str) -> str:
    """`escape` for a field that must stay on its line (path, module, symbol): newlines made visible, reversibly."""
    text = escape(text)
    if "\n" not in text and _NL not in text:
        return text
    return text.replace(_NL, _NL + _NL).replace("\n", _NL + "n")


def unescape_line(text: str) -> str:
    if _NL in text:
        text = _LINE_UNESCAPE_RE.sub(lambda m: _NL if m.group(1) == _NL else "\n", text)
    return unescape(text)


def module_top(module: str) -> tuple[str, str]:
    """`core::market::x` -> (`core`, `::market::x`); `pkg.mod` -> (`pkg`, `.mod`)."""
    cut = len(module)
    for sep in ("::", "."):
        i = module.find(sep)
        if 0 < i < cut:
            cut = i
    return module[:cut], module[cut:]


def _family_safe(name: str) -> bool:
    return bool(name) and len(name) <= MAX_FAMILY_NAME and not any(c in name for c in "<>\n\r") and name == name.strip()


# ------------------------------------------------------------------ parsed structure


@dataclasses.dataclass
class ParsedChunk:
    change_type: str  # e.g. NEW_FUNCTION
    symbol: str | None
    code: str | None  # the code (after `<CODE>`) or diff lines (after `<DIFF>`)
    code_form: str | None  # "code", "diff" or None
    old_file: str | None = None
    old_symbol: str | None = None


@dataclasses.dataclass
class ParsedFile:
    path: str
    module: str | None
    chunks: list[ParsedChunk] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ParsedCommit:
    """What `parse_commit` recovers; `problems` lists what was malformed (empty when well formed)."""

    author: str | None = None
    date: str | None = None
    message: str | None = None
    task: str | None = None
    files: list[ParsedFile] = dataclasses.field(default_factory=list)
    truncated: bool = False  # the text carries the <TRUNCATED> marker
    complete: bool = False  # <COMMIT_END> was reached
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def well_formed(self) -> bool:
        return self.complete and not self.problems

    @property
    def changes(self) -> list[tuple[str, str, str | None]]:
        """(path, change type, symbol) for every chunk, in order."""
        return [(f.path, c.change_type, c.symbol) for f in self.files for c in f.chunks]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ the language


@dataclasses.dataclass
class CommitLanguage:
    """The special tokens and the rendering, with the author/module families chosen for one history."""

    authors: list[str] = dataclasses.field(default_factory=list)  # names with an <AUTHOR:x> token
    modules: list[str] = dataclasses.field(default_factory=list)  # top segments with a <MODULE:x> token
    tokenizer_info: dict = dataclasses.field(default_factory=dict)  # mode, base, added_tokens, ...
    compact_max_files: int = 32  # compact form: files listed at most (0 = all), then <TRUNCATED>
    compact_max_changes: int = 16  # compact form: change lines at most (0 = all); later files get their path only

    def __post_init__(self) -> None:
        self._authors = set(self.authors)
        self._modules = set(self.modules)

    # ---- construction and storage

    @classmethod
    def from_counts(cls, author_counts: dict[str, int], module_counts: dict[str, int], top_authors: int, top_modules: int,
                    **limits: int) -> "CommitLanguage":
        """The K most frequent of each family (ties by name, so the choice is deterministic)."""

        def top(counts: dict[str, int], k: int) -> list[str]:
            eligible = [(n, c) for n, c in counts.items() if _family_safe(n)]
            eligible.sort(key=lambda nc: (-nc[1], nc[0]))
            return [n for n, _ in eligible[:k]]

        return cls(authors=top(author_counts, top_authors), modules=top(module_counts, top_modules), **limits)

    def save(self, folder: Path | str) -> Path:
        return write_json(
            Path(folder) / LANGUAGE_FILE,
            {
                "format_version": FORMAT_VERSION,
                "authors": self.authors,
                "modules": self.modules,
                "compact_max_files": self.compact_max_files,
                "compact_max_changes": self.compact_max_changes,
                "tokenizer": self.tokenizer_info,
                # rows training must add to a base model's embeddings (0 for a trained tokenizer)
                "added_tokens": int(self.tokenizer_info.get("added_tokens", 0)),
                "special_tokens": self.special_tokens(),
            },
        )

    @classmethod
    def load(cls, tokenizer_dir: Path | str) -> "CommitLanguage":
        """The language saved beside a tokenizer by the tokenizer stage."""
        path = Path(tokenizer_dir) / LANGUAGE_FILE
        if not Path(tokenizer_dir).exists():
            require(Path(tokenizer_dir), "tokenizer")
        if not path.is_file():
            raise UserError(f"{tokenizer_dir}: no {LANGUAGE_FILE}: not a tokenizer folder written by the tokenizer stage (rerun it)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format_version") != FORMAT_VERSION:
                raise UserError(
                    f"{path}: commit language format {data.get('format_version')}, this code reads {FORMAT_VERSION}: rerun the tokenizer stage"
                )
            lang = cls(
                authors=list(data["authors"]),
                modules=list(data["modules"]),
                tokenizer_info=dict(data.get("tokenizer") or {}),
                compact_max_files=int(data.get("compact_max_files", 0)),
                compact_max_changes=int(data.get("compact_max_changes", 0)),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: corrupt commit language file ({type(exc).__name__}): rerun the tokenizer stage") from None
        return lang

    def rendering(self) -> dict:
        """What decides how a commit is written (besides the tokenizer): equal dicts, equal texts."""
        return {"authors": self.authors, "modules": self.modules,
                "compact_max_files": self.compact_max_files, "compact_max_changes": self.compact_max_changes}

    # ---- special tokens

    def special_tokens(self) -> list[str]:
        """Every special token, in the order they get ids in a trained tokenizer."""
        return [
            PAD, BOS, EOS,
            *STRUCTURE_TOKENS,
            *CHANGE_TOKENS,
            *(f"<AUTHOR:{a}>" for a in self.authors),
            *(f"<MODULE:{m}>" for m in self.modules),
        ]

    def check_tokenizer(self, tokenizer: Any, where: str = "the tokenizer") -> None:
        """UserError unless every special token of this language is one id in `tokenizer`."""
        missing = []
        vocab = tokenizer.get_vocab()
        for token in self.special_tokens():
            if token in (PAD, BOS, EOS):
                continue  # an extended base tokenizer keeps its own bos/eos/pad
            if token not in vocab or encode_texts(tokenizer, [token])[0] != [vocab[token]]:
                missing.append(token)
        if missing:
            raise UserError(
                f"{where} does not match the commit language: {len(missing)} special token(s) missing or split "
                f"(e.g. {missing[0]}): rerun the tokenizer stage (python pipeline.py --stage tokenizer --force)"
            )
        for name in ("bos", "eos", "pad"):
            if special_id(tokenizer, name) is None:
                raise UserError(f"{where} has no {name} token: rerun the tokenizer stage")

    def has_author_token(self, name: str) -> bool:
        """True if `name` is written as one <AUTHOR:name> token (else it is spelled out)."""
        return name in self._authors

    def has_module_token(self, module: str) -> bool:
        """True if the module's top segment is written as one <MODULE:top> token (else it is spelled out)."""
        return module_top(module)[0] in self._modules

    # ---- rendering

    def render_header(self, commit: Commit) -> str:
        name = commit.author.name
        author = f"<AUTHOR:{name}>" if name in self._authors else AUTHOR + escape(name).replace("\n", " ")
        return f"{COMMIT_START}{author}{DATE}{commit.authored_at[:10]}\n{MSG}{escape(commit.message)}\n"

    def render_file_header(self, path: str, module: str | None) -> str:
        text = FILE + escape_line(path)
        if module:
            top, rest = module_top(module)
            text += f"<MODULE:{top}>{escape_line(rest)}" if top in self._modules else MODULE + escape_line(module)
        return text + "\n"

    def render_chunk(self, chunk: Chunk, form: str = "full") -> str:
        """One chunk: its change line (and code block in the full form); starts with a token."""
        ctype = chunk.change_type
        token = f"<CHANGE:{ctype.lower()}>"
        # a change type we have no token for is spelled out, then a space, then the symbol
        text = (token if ctype in _CHANGE_TYPE_SET else CHANGE + escape(ctype) + " ") + escape_line(chunk.symbol or "")
        if chunk.old_symbol and chunk.old_symbol != chunk.symbol:
            text += WAS + escape_line(chunk.old_symbol)
        if chunk.old_file and chunk.old_file != chunk.file:
            text += FROM + escape_line(chunk.old_file)
        text += "\n"
        if form == "full":
            prefix = ctype.split("_", 1)[0]
            if prefix == "NEW" and chunk.after is not None:
                text += CODE + escape(chunk.after) + "\n"
            elif prefix != "DELETED" and chunk.diff:
                text += DIFF + escape(chunk.diff) + "\n"
        return text

    def render_segments(self, chunks: Sequence[Chunk], form: str = "full") -> list[str]:
        """The commit's changes as pieces, one per chunk (the file header joins its first chunk).

        Every piece starts with a special token, so encoding the pieces one by one
        gives the same ids as encoding their concatenation: the dataset builder cuts
        targets between pieces.
        """
        segments = []
        for path, module, file_chunks in group_by_file(chunks):
            header = self.render_file_header(path, module)
            for i, chunk in enumerate(file_chunks):
                segments.append((header if i == 0 else "") + self.render_chunk(chunk, form))
        return segments

    def render_commit(self, commit: Commit, chunks: Sequence[Chunk], form: str = "compact") -> str:
        """The commit as text: "compact" (no code, for history) or "full" (with code, for targets)."""
        if form not in ("compact", "full"):
            raise ValueError(f"form must be 'compact' or 'full', not {form!r}")
        body = self.render_segments(chunks, "full") if form == "full" else self.render_compact_body(chunks)
        return self.render_header(commit) + "".join(body) + COMMIT_END + "\n"

    def render_compact_body(self, chunks: Sequence[Chunk]) -> list[str]:
        """Files with their change lines, within `compact_max_files` / `compact_max_changes`.

        A huge commit (a merge carrying a branch, a vendoring) would otherwise fill the
        whole context and push every older commit out of it. What is left out is
        marked with <TRUNCATED>.
        """
        out: list[str] = []
        changes_left = self.compact_max_changes or len(chunks)
        omitted = False
        for n, (path, module, file_chunks) in enumerate(group_by_file(chunks)):
            if self.compact_max_files and n >= self.compact_max_files:
                omitted = True
                break
            out.append(self.render_file_header(path, module))
            shown = file_chunks[: max(changes_left, 0)]
            out.extend(self.render_chunk(chunk, "compact") for chunk in shown)
            changes_left -= len(shown)
            omitted |= len(shown) < len(file_chunks)
        if omitted:
            out.append(TRUNCATED + "\n")
        return out

    def render_task(self, task: str) -> str:
        return TASK + escape(task) + "\n"

    # ---- parsing

    def parse_commit(self, text: str) -> ParsedCommit:
        """Structure back from rendered or generated text; never raises, lists problems instead.

        Accepts a whole rendering, a target (starting at `<FILE>`), or a prompt's
        tail followed by generated text; stops at `<COMMIT_END>`.
        """
        return parse_commit(text)

    # ---- prompts (the dataset builder's code path)

    def build_prompt(
        self,
        history: Sequence[tuple[Commit, Sequence[Chunk]]],
        task: str,
        tokenizer: Any,
        context_window: int,
        cache: dict[str, list[int]] | None = None,
    ) -> list[int]:
        """The ids of the context the model continues: <BOS>, compact history, <TASK> task.

        `history` is oldest first; when `context_window` is short the most recent
        commits are kept (a contiguous run ending at the last one). The task is cut
        to fit when it alone is too long. `cache` (commit hash -> ids of its compact
        rendering) saves encoding a commit again across calls. The dataset builder
        makes its contexts with the same steps: render_commit(compact), render_task,
        encode_texts, assemble_prompt.
        """
        cache = {} if cache is None else cache
        missing = [(c, ch) for c, ch in history if c.hash not in cache]
        if missing:
            encoded = encode_texts(tokenizer, [self.render_commit(c, ch, "compact") for c, ch in missing])
            cache.update((c.hash, ids) for (c, _), ids in zip(missing, encoded))
        task_ids = encode_texts(tokenizer, [self.render_task(task)])[0]
        prompt, _ = assemble_prompt([cache[c.hash] for c, _ in history], task_ids, special_id(tokenizer, "bos"), context_window)
        return prompt


def assemble_prompt(history_ids: Sequence[Sequence[int] | None], task_ids: Sequence[int], bos_id: int, budget: int) -> tuple[list[int], int]:
    """<BOS> + the most recent history that fits + the task; returns (ids, history commits dropped)."""
    if budget < 2:
        raise ValueError(f"prompt budget {budget} is below 2 tokens")
    task_ids = list(task_ids[: budget - 1])
    room = budget - 1 - len(task_ids)
    kept = 0
    for ids in reversed(history_ids):
        if ids is None or len(ids) > room:  # None: a rendering known to be longer than any budget
            break
        room -= len(ids)
        kept += 1
    prompt = [bos_id]
    for ids in history_ids[len(history_ids) - kept :]:
        prompt.extend(ids)
    prompt.extend(task_ids)
    return prompt, len(history_ids) - kept


_CHANGE_TYPE_SET = frozenset(ALL_CHANGE_TYPES)


def group_by_file(chunks: Sequence[Chunk]) -> list[tuple[str, str | None, list[Chunk]]]:
    """Consecutive chunks of one file, with the file's module (its first chunk's)."""
    groups: list[tuple[str, str | None, list[Chunk]]] = []
    for chunk in chunks:
        if groups and groups[-1][0] == chunk.file:
            groups[-1][2].append(chunk)
        else:
            groups.append((chunk.file, chunk.module, [chunk]))
    return groups


def parse_commit(text: str) -> ParsedCommit:
    """See `CommitLanguage.parse_commit` (the parser needs no family list: tokens carry their value)."""
    parsed = ParsedCommit()
    if TASK in text:  # a prompt followed by its continuation: the commit starts at the task
        text = text[text.rindex(TASK) :]
    pieces = _TOKEN_RE.split(text)
    # pieces alternate: text, token, text, token, ..., text
    current_file: ParsedFile | None = None
    current_chunk: ParsedChunk | None = None
    i = 1
    if pieces[0].strip():
        parsed.problems.append(f"text before the first token: {pieces[0][:40]!r}")
    while i < len(pieces):
        token, body = pieces[i], pieces[i + 1]
        i += 2
        if token == COMMIT_END:
            parsed.complete = True
            break
        line, _, rest = body.partition("\n")
        if token in (BOS, PAD, EOS, COMMIT_START):
            _expect_empty(parsed, token, body)
        elif token == AUTHOR or token.startswith("<AUTHOR:"):
            parsed.author = token[8:-1] if token != AUTHOR else unescape(line)
            if token != AUTHOR:
                _expect_empty(parsed, token, body)
        elif token == DATE:
            parsed.date = line
            _expect_empty(parsed, token, rest)
        elif token in (MSG, TASK):
            value = unescape(_strip_one_newline(body))
            if token == MSG:
                parsed.message = value
            else:
                parsed.task = value
        elif token == FILE:
            current_file = ParsedFile(path=unescape_line(line), module=None)
            current_chunk = None
            parsed.files.append(current_file)
            if "\n" not in body and i < len(pieces) and not pieces[i].startswith("<MODULE"):
                _expect_newline(parsed, token, body)
            _expect_empty(parsed, token, rest)
        elif token == MODULE or token.startswith("<MODULE:"):
            value = unescape_line(line) if token == MODULE else token[8:-1] + unescape_line(line)
            if current_file is None:
                parsed.problems.append(f"{token} outside a file")
            else:
                current_file.module = value
            _expect_empty(parsed, token, rest)
        elif token == CHANGE or token.startswith("<CHANGE:"):
            if token == CHANGE:
                change, _, symbol = line.partition(" ")
                change = unescape(change)
            else:
                change, symbol = token[8:-1].upper(), line
            symbol = unescape_line(symbol) or None
            if current_file is None:
                parsed.problems.append(f"{token} before any {FILE}")
                current_file = ParsedFile(path="", module=None)
                parsed.files.append(current_file)
            current_chunk = ParsedChunk(change_type=change, symbol=symbol, code=None, code_form=None)
            current_file.chunks.append(current_chunk)
            if "\n" not in body and not (i < len(pieces) and pieces[i] in (FROM, WAS)):
                _expect_newline(parsed, token, body)
            _expect_empty(parsed, token, rest)
        elif token in (FROM, WAS):
            if current_chunk is None:
                parsed.problems.append(f"{token} outside a change")
            elif token == FROM:
                current_chunk.old_file = unescape_line(line)
            else:
                current_chunk.old_symbol = unescape_line(line)
            if "\n" not in body and not (i < len(pieces) and pieces[i] == FROM):
                _expect_newline(parsed, token, body)
            _expect_empty(parsed, token, rest)
        elif token in (CODE, DIFF):
            if current_chunk is None:
                parsed.problems.append(f"{token} outside a change")
            else:
                current_chunk.code = unescape(_strip_one_newline(body))
                current_chunk.code_form = "code" if token == CODE else "diff"
        elif token == TRUNCATED:
            parsed.truncated = True
            _expect_empty(parsed, token, body)
    if not parsed.complete:
        parsed.problems.append(f"no {COMMIT_END}: the text stops early")
    return parsed


def _strip_one_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


def _expect_empty(parsed: ParsedCommit, token: str, text: str) -> None:
    if text.strip():
        parsed.problems.append(f"unexpected text after {token}: {text.strip()[:40]!r}")


def _expect_newline(parsed: ParsedCommit, token: str, body: str) -> None:
    parsed.problems.append(f"line after {token} does not end: {body[:40]!r}")


# ------------------------------------------------------------------ tokenizers


def backend(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` behind a transformers tokenizer (or the object itself)."""
    return getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None) or tokenizer


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text, without bos/eos, through the library's batch encoder."""
    if not texts:
        return []
    raw = backend(tokenizer)
    if len(texts) == 1:  # one text: no thread pool to wake (the same ids)
        return [raw.encode(texts[0], add_special_tokens=False).ids]
    encode = getattr(raw, "encode_batch_fast", None) or raw.encode_batch  # _fast: no character offsets (~1.6x faster)
    return [e.ids for e in encode(list(texts), add_special_tokens=False)]


def decode_ids(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of `ids`, special tokens kept, no space clean-up (the exact inverse of `encode_texts`).

    The tokenizers library runs added tokens through the byte-level decoder too, which garbles one that
    holds a non-ASCII character (`<MODULE:naïve>` decodes as `<MODULE:na\ufffdve>`): those are put back
    by id, and the runs between them decoded as usual.
    """
    raw = backend(tokenizer)
    ids = list(ids)
    verbatim = _non_ascii_added_tokens(raw)
    if not verbatim or not any(i in verbatim for i in ids):
        return raw.decode(ids, skip_special_tokens=False)
    parts, run = [], []
    for i in ids:
        if i in verbatim:
            if run:
                parts.append(raw.decode(run, skip_special_tokens=False))
                run = []
            parts.append(verbatim[i])
        else:
            run.append(i)
    if run:
        parts.append(raw.decode(run, skip_special_tokens=False))
    return "".join(parts)


_VERBATIM: dict[int, tuple[Any, int, dict[int, str]]] = {}  # id(raw) -> (raw, its size, its non-ASCII added tokens)


def _non_ascii_added_tokens(raw: Any) -> dict[int, str]:
    """Added tokens whose text is not ASCII, by id; cached per tokenizer and its size (tokens get added)."""
    if not hasattr(raw, "get_added_tokens_decoder"):
        return {}
    size = raw.get_vocab_size(with_added_tokens=True)
    cached = _VERBATIM.get(id(raw))
    if cached is None or cached[0] is not raw or cached[1] != size:
        found = {int(i): t.content for i, t in raw.get_added_tokens_decoder().items() if not t.content.isascii()}
        cached = _VERBATIM[id(raw)] = (raw, size, found)
    return cached[2]


_DEFAULT_SPECIAL = {"bos": BOS, "eos": EOS, "pad": PAD}


def special_id(tokenizer: Any, name: str) -> int | None:
    """The id of the tokenizer's bos/eos/pad token (a transformers tokenizer's own, else ours)."""
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is not None:
        return int(value)
    raw = backend(tokenizer)
    value = raw.token_to_id(_DEFAULT_SPECIAL[name]) if hasattr(raw, "token_to_id") else None
    return None if value is None else int(value)


# ------------------------------------------------------------------ reading a history


def iter_commit_records(commits_path: Path, chunks_path: Path) -> Iterator[tuple[Commit, list[Chunk]]]:
    """Each commit of `commits.json` with its chunks from `chunks.jsonl`, as checked records, streaming.

    A record of the wrong shape (valid JSON, but `{"hash": 5}`, `files: "oops"`, a chunk line
    `{"x": 1}`) is a UserError naming the file, the line and the field.
    """
    position = 0
    chunk_line = 0
    joined = iter_commits_with_chunks(commits_path, chunks_path)
    while True:
        try:
            pair = next(joined, None)
        except (KeyError, TypeError, AttributeError):  # the join met a record that is not a commit or chunk
            raise _first_malformed(commits_path, chunks_path) from None
        if pair is None:
            return
        commit_dict, chunk_dicts = pair
        commit = commit_record(commit_dict, commits_path, position + COMMITS_FIRST_LINE)
        chunks = [chunk_record(c, chunks_path, chunk_line + k + 1) for k, c in enumerate(chunk_dicts)]
        position += 1
        chunk_line += len(chunk_dicts)
        yield commit, chunks


COMMITS_FIRST_LINE = 3  # commits.json: the metadata on line 1, `"commits": [` on line 2, then one commit per line

_TEXT, _OPTIONAL_TEXT = (str,), (str, type(None))
# The fields rendering and ordering read, with their types: checked on every record (a fast check;
# records.shape_error, which checks every field, names the problem when one fails).
_COMMIT_READS = {"hash": _TEXT, "parents": (list,), "author": (dict,), "authored_at": _TEXT, "committed_at": _TEXT,
                 "message": _TEXT, "files": (list,), "is_merge": (bool,), "on_default_first_parent": (bool,)}
_CHUNK_READS = {"commit": _TEXT, "file": _TEXT, "module": _OPTIONAL_TEXT, "symbol": _OPTIONAL_TEXT, "change_type": _TEXT,
                "after": _OPTIONAL_TEXT, "diff": _TEXT, "old_file": _OPTIONAL_TEXT, "old_symbol": _OPTIONAL_TEXT}


def _reads_fit(data: Any, fields: dict[str, tuple]) -> bool:
    return type(data) is dict and all(isinstance(data.get(name), types) for name, types in fields.items() if name in data)


def commit_record(data: Any, path: Path, line: int) -> Commit:
    """A commit record from its commits.json dict; UserError naming the file, line and field when it is malformed."""
    commit = _commit_if_readable(data)
    if commit is None:
        problem = shape_error(Commit, data) or "not a commit record"
        raise UserError(f"{path}: line {line}: {problem}: rerun the git_scraper stage")
    for name in ("authored_at", "committed_at"):
        try:
            datetime.fromisoformat(getattr(commit, name))
        except ValueError:
            value = getattr(commit, name)[:40]
            raise UserError(f"{path}: line {line}: {name}: expected an ISO 8601 time, got {value!r}: rerun the git_scraper stage") from None
    return commit


def _commit_if_readable(data: Any) -> Commit | None:
    if not (_reads_fit(data, _COMMIT_READS) and _reads_fit(data.get("author"), {"name": _TEXT})
            and all(isinstance(p, str) for p in data.get("parents", ()))):
        return None
    try:
        return Commit.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError):  # a field missing, or a malformed entry of `files`
        return None


def chunk_record(data: Any, path: Path, line: int) -> Chunk:
    """A chunk record from its chunks.jsonl dict; UserError naming the file, line and field when it is malformed."""
    if _reads_fit(data, _CHUNK_READS):
        try:
            return Chunk.from_dict(data)
        except TypeError:  # a required field is missing
            pass
    problem = shape_error(Chunk, data) or "not a chunk record"
    raise UserError(f"{path}: line {line}: {problem}: rerun the semantic_chunker stage")


def _first_malformed(commits_path: Path, chunks_path: Path) -> UserError:
    """The first malformed record of either file (the join stopped on one it could not read)."""
    for position, data in enumerate(iter_commit_dicts(commits_path)):
        commit_record(data, commits_path, position + COMMITS_FIRST_LINE)  # raises on the bad one
    for position, data in enumerate(iter_jsonl(chunks_path, "semantic_chunker")):
        chunk_record(data, chunks_path, position + 1)
    return UserError(f"{commits_path}, {chunks_path}: a record could not be read: rerun the git_scraper and semantic_chunker stages")


def count_families(history: Iterable[tuple[Commit, Sequence[Chunk]]]) -> tuple[dict[str, int], dict[str, int]]:
    """Commits per author name, chunks per module top segment."""
    authors: collections.Counter = collections.Counter()
    modules: collections.Counter = collections.Counter()
    for commit, chunks in history:
        authors[commit.author.name] += 1
        for chunk in chunks:
            if chunk.module:
                modules[module_top(chunk.module)[0]] += 1
    return dict(authors), dict(modules)
