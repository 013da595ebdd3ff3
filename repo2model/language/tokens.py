"""The special tokens of the commit language, and the escaping that keeps free text from spelling them.

Fixed tokens: <PAD> <BOS> <EOS>, the structure tokens (`STRUCTURE_TOKENS`: <COMMIT_START>,
<FILE>, <CHANGE>, <CODE>, ...) and one <CHANGE:x> per change type (`CHANGE_TOKENS`).
Families chosen per history (`CommitLanguage`): <AUTHOR:name> for the most frequent
authors, <MODULE:top> for the most frequent module tops (`module_top`); a family name
must pass `family_safe`.

Text that happens to spell one of our tokens is escaped with a word joiner (U+2060)
after the `<` (`escape`); a one-line field (path, module, symbol) also writes a newline
as `␤n` and a `␤` as `␤␤` (`escape_line`). Both are undone exactly by `unescape` /
`unescape_line`.
"""

from __future__ import annotations

import re

from repo2model.core.records import ALL_CHANGE_TYPES

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
TOKEN_RE = re.compile(r"(<(?:" + _STRUCTURE_NAMES + r")>|<(?:CHANGE|AUTHOR|MODULE):[^<>\n]*>)")

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


def family_safe(name: str) -> bool:
    return bool(name) and len(name) <= MAX_FAMILY_NAME and not any(c in name for c in "<>\n\r") and name == name.strip()
