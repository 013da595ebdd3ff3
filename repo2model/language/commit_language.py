"""The commit language: how a commit is written as text, defined once for every stage.

Stages 3 (tokenizer), 4 (dataset builder), training and prediction all read and
write commits through this module and its parts, so the special tokens, the
rendering and the parser cannot drift apart.

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
Its parts: the special tokens and escaping (`tokens.py`), the parser
(`parse.py`, `parse_commit`), text <-> ids through a tokenizer (`encoding.py`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from repo2model.core.artifacts import require, write_json
from repo2model.core.errors import UserError
from repo2model.core.records import ALL_CHANGE_TYPES, Chunk, Commit
from repo2model.language.encoding import encode_texts, special_id
from repo2model.language.parse import ParsedCommit, parse_commit
from repo2model.language.tokens import (
    AUTHOR,
    BOS,
    CHANGE,
    CHANGE_TOKENS,
    CODE,
    COMMIT_END,
    COMMIT_START,
    DATE,
    DIFF,
    EOS,
    FILE,
    FROM,
    MODULE,
    MSG,
    PAD,
    STRUCTURE_TOKENS,
    TASK,
    TRUNCATED,
    WAS,
    escape,
    escape_line,
    family_safe,
    module_top,
)

LANGUAGE_FILE = "commit_language.json"
FORMAT_VERSION = 1


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
            eligible = [(n, c) for n, c in counts.items() if family_safe(n)]
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
