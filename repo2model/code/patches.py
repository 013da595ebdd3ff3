"""A unified diff as the chunker reads it: its lines with their numbers on each side, and the text and
the parts cut from a run of them.

    lines = parse_patch(change.patch)     # [PatchLine(tag, text, old, new, hunk, tail)]

A chunk's `diff` (`diff_text`) is its changed lines with the patch's context lines
that fall inside the unit it belongs to; `patch_side` is one side of a hunk chunk's
lines (its `before`/`after`); `split_hunk` and `split_unit` cut a run of changed
lines longer than max_chunk_size into parts, at blank lines or the unit's children.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


@dataclass
class PatchLine:
    tag: str  # "+", "-" or " "
    text: str  # the line as the patch shows it, tag included
    old: int  # old line number ("-", " "), or the old line a "+" line is inserted before
    new: int  # new line number ("+", " "), or the new line a "-" line was removed before
    hunk: int  # index of its @@ hunk
    tail: str | None = None  # a "\ No newline at end of file" line that follows it


def parse_patch(patch: str) -> list[PatchLine]:
    """The lines of a unified diff (as FileChange.patch holds it) with their line numbers."""
    lines: list[PatchLine] = []
    old = new = 0
    hunk = -1
    for raw in patch.split("\n"):
        if raw.startswith("@@ "):
            match = _HUNK_HEADER.match(raw)
            if match:
                old, new = int(match.group(1)), int(match.group(2))
                old, new = max(old, 1), max(new, 1)  # "-0,0": a file that was empty
                hunk += 1
                continue
        if hunk < 0:
            continue
        tag = raw[:1]
        if tag == "\\":
            if lines:
                lines[-1].tail = raw
            continue
        if tag == "+":
            lines.append(PatchLine("+", raw, old, new, hunk))
            new += 1
        elif tag == "-":
            lines.append(PatchLine("-", raw, old, new, hunk))
            old += 1
        elif tag == " " or raw == "":
            lines.append(PatchLine(" ", raw or " ", old, new, hunk))
            old += 1
            new += 1
    if lines and lines[-1].tag == " " and lines[-1].text == " " and patch.endswith("\n"):
        lines.pop()  # the split after the final newline, not a context line
    return lines


def is_blank(line: PatchLine) -> bool:
    return not line.text[1:].strip()


def patch_side(patch: list[PatchLine], members: list[int], tag: str) -> tuple[str | None, list[int] | None]:
    """The text of one side of a hunk piece, from its first to its last changed line, and its span."""
    lines = []
    numbers = []
    member_set = set(members)
    for index in range(members[0], members[-1] + 1):
        line = patch[index]
        if line.tag == " " or (line.tag == tag and index in member_set):
            lines.append(line.text[1:])
            numbers.append(line.old if tag == "-" else line.new)
    if not lines:
        return None, None
    return "\n".join(lines), [min(numbers), max(numbers)]


def diff_text(patch: list[PatchLine], members: list[int], member_set: set[int],
               old_range: tuple[int, int] | None = None, new_range: tuple[int, int] | None = None,
               all_context: bool = False) -> str:
    """The piece's changed lines, with the patch's context lines that fall inside its spans
    (hunk pieces: every context line between its first and last changed line)."""
    out = []
    first, last = members[0], members[-1]
    if not all_context:  # context lines inside the unit may precede or follow its changed lines
        while first > 0 and patch[first - 1].tag == " " and patch[first - 1].hunk == patch[first].hunk:
            first -= 1
        while last + 1 < len(patch) and patch[last + 1].tag == " " and patch[last + 1].hunk == patch[last].hunk:
            last += 1
    for index in range(first, last + 1):
        line = patch[index]
        if index in member_set:
            keep = True
        elif line.tag == " " and all_context:
            keep = True
        elif line.tag == " ":
            keep = (old_range is None or old_range[0] <= line.old <= old_range[1]) and (
                new_range is None or new_range[0] <= line.new <= new_range[1]
            ) and (old_range is not None or new_range is not None)
        else:
            keep = False
        if keep:
            out.append(line.text)
            if line.tail:
                out.append(line.tail)
    return "\n".join(out)


def split_hunk(members: list[int], patch: list[PatchLine], max_size: int) -> list[list[int]]:
    """Cut a hunk piece so that each part spans at most max_size patch lines, preferring blank lines."""
    if members[-1] - members[0] + 1 <= max_size:
        return [members]
    parts: list[list[int]] = [[]]
    for index in members:
        part = parts[-1]
        if part and index - part[0] + 1 > max_size:
            cut = max((p for p, i in enumerate(part) if is_blank(patch[i]) and p > 0), default=None)
            if cut is not None and cut + 1 < len(part):
                parts[-1], rest = part[: cut + 1], part[cut + 1 :]
                parts.append(rest)
                if index - rest[0] + 1 > max_size:
                    parts.append([])
            else:
                parts.append([])
        parts[-1].append(index)
    return [p for p in parts if p]


def split_unit(members, patch, old_unit, new_unit, max_size):
    """Parts of a large unit's changed lines, each with the windows of the unit shown on each side.

    A part's changed lines are contiguous in the patch and span at most max_size lines
    on each side; cuts fall before a line that starts one of the unit's children
    (statements, items) where possible. Windows widen to the enclosing children.
    """
    parts: list[list[int]] = [[]]
    for index in members:
        part = parts[-1]
        if part:
            olds = [patch[i].old for i in part] + [patch[index].old]
            news = [patch[i].new for i in part] + [patch[index].new]
            if max(olds) - min(olds) + 1 > max_size or max(news) - min(news) + 1 > max_size:
                cut = None
                if not _starts_child(patch[index], old_unit, new_unit) and patch[index].hunk == patch[part[-1]].hunk:
                    cut = max((p for p, i in enumerate(part) if p > 0 and _starts_child(patch[i], old_unit, new_unit)
                               and not (patch[part[p - 1]].tag == "-" and patch[i].tag == "+")), default=None)
                if cut is not None:
                    parts[-1], rest = part[:cut], part[cut:]
                    parts.append(rest)
                    olds = [patch[i].old for i in rest] + [patch[index].old]
                    news = [patch[i].new for i in rest] + [patch[index].new]
                    if max(olds) - min(olds) + 1 > max_size or max(news) - min(news) + 1 > max_size:
                        parts.append([])
                else:
                    parts.append([])
        parts[-1].append(index)
    result = []
    for part in parts:
        if not part:
            continue
        old_window = _window([patch[i].old for i in part], old_unit, max_size)
        new_window = _window([patch[i].new for i in part], new_unit, max_size)
        result.append((part, old_window, new_window))
    return result


def _starts_child(line: PatchLine, old_unit, new_unit) -> bool:
    if line.tag == "-":
        return old_unit is not None and line.old in old_unit.inner
    return new_unit is not None and line.new in new_unit.inner


def _window(numbers: list[int], unit, max_size: int) -> tuple[int, int] | None:
    """Lines of `unit` to show around `numbers`: widened to its children's boundaries within max_size."""
    if unit is None:
        return None
    low = max(unit.start, min(numbers))
    high = min(unit.end, max(max(numbers), low))
    if high < low:
        high = low
    starts = [s for s in unit.inner if s <= low]
    wide_low = starts[-1] if starts else unit.start
    after = [s for s in unit.inner if s > high]
    wide_high = (after[0] - 1) if after else unit.end
    if wide_high - wide_low + 1 <= max_size:
        return wide_low, wide_high
    return max(unit.start, low - 3), min(unit.end, high + 3, max(unit.start, low - 3) + max_size - 1)

