"""Reading the commit language back: the structure of rendered or generated text.

    parsed = parse_commit(text)      # never raises
    parsed.well_formed               # <COMMIT_END> reached and no problem found
    parsed.changes                   # [(path, change type, symbol)] for every chunk, in order

Accepts a whole rendering, a target (starting at `<FILE>`), or a prompt's tail
followed by generated text (the commit then starts at the last `<TASK>`); stops
at `<COMMIT_END>`. What is malformed is listed in `problems`. The parser needs no
family list: <AUTHOR:x> and <MODULE:x> tokens carry their value.
"""

from __future__ import annotations

import dataclasses

from repo2model.language.tokens import (
    AUTHOR,
    BOS,
    CHANGE,
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
    TASK,
    TOKEN_RE,
    TRUNCATED,
    WAS,
    unescape,
    unescape_line,
)


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


def parse_commit(text: str) -> ParsedCommit:
    """The structure of `text` (see the module docstring); never raises, lists problems instead."""
    if TASK in text:  # a prompt followed by its continuation: the commit starts at the task
        text = text[text.rindex(TASK) :]
    pieces = TOKEN_RE.split(text)
    # pieces alternate: text, token, text, token, ..., text
    parser = _Parser(pieces)
    if pieces[0].strip():
        parser.parsed.problems.append(f"text before the first token: {pieces[0][:40]!r}")
    while parser.position < len(pieces):
        token, body = pieces[parser.position], pieces[parser.position + 1]
        parser.position += 2
        if token == COMMIT_END:
            parser.parsed.complete = True
            break
        parser.read(token, body)
    if not parser.parsed.complete:
        parser.parsed.problems.append(f"no {COMMIT_END}: the text stops early")
    return parser.parsed


class _Parser:
    """The state of one parse: the commit so far, the current file and chunk, and the next piece."""

    def __init__(self, pieces: list[str]):
        self.parsed = ParsedCommit()
        self.pieces = pieces
        self.position = 1  # of the next token
        self.file: ParsedFile | None = None
        self.chunk: ParsedChunk | None = None

    def next_token(self) -> str | None:
        return self.pieces[self.position] if self.position < len(self.pieces) else None

    def read(self, token: str, body: str) -> None:
        """One token and the text up to the next one."""
        line, _, rest = body.partition("\n")
        if token in (BOS, PAD, EOS, COMMIT_START):
            self.expect_empty(token, body)
        elif token in (AUTHOR, DATE, MSG, TASK) or token.startswith("<AUTHOR:"):
            self.read_header(token, body, line, rest)
        elif token == FILE:
            self.read_file(body, line, rest)
        elif token == MODULE or token.startswith("<MODULE:"):
            value = unescape_line(line) if token == MODULE else token[8:-1] + unescape_line(line)
            if self.file is None:
                self.parsed.problems.append(f"{token} outside a file")
            else:
                self.file.module = value
            self.expect_empty(token, rest)
        elif token == CHANGE or token.startswith("<CHANGE:"):
            self.read_change(token, body, line, rest)
        elif token in (FROM, WAS):
            self.read_old_name(token, body, line, rest)
        elif token in (CODE, DIFF):
            if self.chunk is None:
                self.parsed.problems.append(f"{token} outside a change")
            else:
                self.chunk.code = unescape(_strip_one_newline(body))
                self.chunk.code_form = "code" if token == CODE else "diff"
        elif token == TRUNCATED:
            self.parsed.truncated = True
            self.expect_empty(token, body)

    def read_header(self, token: str, body: str, line: str, rest: str) -> None:
        parsed = self.parsed
        if token == AUTHOR or token.startswith("<AUTHOR:"):
            parsed.author = token[8:-1] if token != AUTHOR else unescape(line)
            if token != AUTHOR:
                self.expect_empty(token, body)
        elif token == DATE:
            parsed.date = line
            self.expect_empty(token, rest)
        elif token == MSG:
            parsed.message = unescape(_strip_one_newline(body))
        else:
            parsed.task = unescape(_strip_one_newline(body))

    def read_file(self, body: str, line: str, rest: str) -> None:
        self.file = ParsedFile(path=unescape_line(line), module=None)
        self.chunk = None
        self.parsed.files.append(self.file)
        following = self.next_token()
        if "\n" not in body and following is not None and not following.startswith("<MODULE"):
            self.expect_newline(FILE, body)
        self.expect_empty(FILE, rest)

    def read_change(self, token: str, body: str, line: str, rest: str) -> None:
        if token == CHANGE:
            change, _, symbol = line.partition(" ")
            change = unescape(change)
        else:
            change, symbol = token[8:-1].upper(), line
        symbol = unescape_line(symbol) or None
        if self.file is None:
            self.parsed.problems.append(f"{token} before any {FILE}")
            self.file = ParsedFile(path="", module=None)
            self.parsed.files.append(self.file)
        self.chunk = ParsedChunk(change_type=change, symbol=symbol, code=None, code_form=None)
        self.file.chunks.append(self.chunk)
        if "\n" not in body and self.next_token() not in (FROM, WAS):
            self.expect_newline(token, body)
        self.expect_empty(token, rest)

    def read_old_name(self, token: str, body: str, line: str, rest: str) -> None:
        """<FROM>old_file (a moved unit) or <WAS>old_name (a renamed one)."""
        if self.chunk is None:
            self.parsed.problems.append(f"{token} outside a change")
        elif token == FROM:
            self.chunk.old_file = unescape_line(line)
        else:
            self.chunk.old_symbol = unescape_line(line)
        if "\n" not in body and self.next_token() != FROM:
            self.expect_newline(token, body)
        self.expect_empty(token, rest)

    def expect_empty(self, token: str, text: str) -> None:
        if text.strip():
            self.parsed.problems.append(f"unexpected text after {token}: {text.strip()[:40]!r}")

    def expect_newline(self, token: str, body: str) -> None:
        self.parsed.problems.append(f"line after {token} does not end: {body[:40]!r}")


def _strip_one_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text
