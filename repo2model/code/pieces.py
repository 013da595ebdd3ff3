"""The changed lines of one file grouped into pieces, each a chunk to be: by the innermost unit that
holds them on their side (old side for `-` lines, new side for `+` lines), or by hunk.

A blank changed line between units joins its neighbour; changed lines outside every
unit become `hunk` pieces; small neighbouring hunk pieces merge (`merge_small_hunks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from repo2model.code import units as code_units
from repo2model.code.patches import PatchLine, is_blank


@dataclass
class Side:
    """One version of a file: its units, lines and module."""

    path: str
    units: code_units.FileUnits
    lines: list[str]
    owner: list[int]
    keys: list[tuple]
    module: str | None  # the file's module (units add their nested mods)


@dataclass
class Piece:
    """The changed lines of one chunk-to-be, before it becomes a Chunk."""

    kind: str
    symbol: str | None
    old_unit: int | None = None  # index into the old side's units
    new_unit: int | None = None
    members: list[int] = field(default_factory=list)  # indices of its changed PatchLines
    module: str | None = None


def unit_pieces(patch: list[PatchLine], old: Side | None, new: Side | None) -> list[Piece]:
    """Group the changed lines by innermost unit; lines outside every unit become hunk pieces."""
    owners: list[tuple[str, int] | None] = []  # per patch line: ("-", old unit) / ("+", new unit) / None
    for line in patch:
        if line.tag == " ":
            owners.append(None)
            continue
        side = old if line.tag == "-" else new
        number = line.old if line.tag == "-" else line.new
        unit = side.owner[number] if side is not None and 0 < number < len(side.owner) else -1
        owners.append((line.tag, unit))
    _attach_blank_lines(patch, owners, old, new)

    pieces: dict[tuple, Piece] = {}
    order: list[tuple] = []  # piece keys by first changed line
    gap_members: list[int] = []
    for index, (line, owner) in enumerate(zip(patch, owners)):
        if owner is None:
            continue
        tag, unit = owner
        if unit < 0:
            gap_members.append(index)
            continue
        side = old if tag == "-" else new
        key = side.keys[unit]
        piece = pieces.get(key)
        if piece is None:
            other = new if tag == "-" else old
            other_unit = _find_key(other, key)
            old_unit, new_unit = (unit, other_unit) if tag == "-" else (other_unit, unit)
            shown = new.units.units[new_unit] if new_unit is not None else old.units.units[old_unit]
            module_side = new if new_unit is not None else old
            piece = Piece(shown.kind, shown.symbol, old_unit, new_unit,
                           module=code_units.join_module(module_side.module, shown.modpath, module_side.path))
            pieces[key] = piece
            order.append(key)
        piece.members.append(index)
    result = [pieces[key] for key in order]
    module = (new or old).module
    result.extend(_gap_pieces(patch, owners, gap_members, module))
    result.sort(key=lambda p: p.members[0])
    return result


def _find_key(side: Side | None, key: tuple) -> int | None:
    if side is None:
        return None
    try:
        return side.keys.index(key)
    except ValueError:
        return None


def _attach_blank_lines(patch: list[PatchLine], owners: list, old: Side | None, new: Side | None) -> None:
    """A blank changed line between units joins the unit next to it in the same run of changes.

    So that adding `\\nfn b() {}` gives one NEW_FUNCTION chunk, not a function plus a
    one-line hunk. A blank line inside a unit's body stays where it is unless the
    neighbour is nested in that unit (a blank between two methods joins the method).
    """
    run: list[int] = []
    for index in range(len(patch) + 1):
        if index < len(patch) and owners[index] is not None:
            run.append(index)
            continue
        if len(run) > 1:
            _attach_in_run(patch, owners, run, old, new)
        run = []


def _attach_in_run(patch, owners, run, old, new) -> None:
    for position, index in enumerate(run):
        if not is_blank(patch[index]):
            continue
        tag, unit = owners[index]
        side = old if tag == "-" else new
        following = [run[p] for p in range(position + 1, len(run))]
        preceding = [run[p] for p in range(position - 1, -1, -1)]
        for candidates in (following, preceding):
            target = next((i for i in candidates if patch[i].tag == tag and not is_blank(patch[i])), None)
            if target is None:
                continue
            target_unit = owners[target][1]
            if target_unit >= 0 and (unit < 0 or _nested(side.units.units[target_unit], side.units.units[unit])):
                owners[index] = (tag, target_unit)
                break


def _nested(inner: code_units.Unit, outer: code_units.Unit) -> bool:
    return inner is not outer and inner.depth > outer.depth and outer.start <= inner.start and inner.end <= outer.end


def _gap_pieces(patch: list[PatchLine], owners: list, gap_members: list[int], module: str | None) -> list[Piece]:
    """Changed lines outside every unit: one hunk piece per run not interrupted by unit lines."""
    pieces: list[Piece] = []
    previous = None
    for index in gap_members:
        interrupted = previous is None or patch[previous].hunk != patch[index].hunk or any(
            owners[i] is not None and owners[i][1] >= 0 for i in range(previous + 1, index)
        )
        if interrupted:
            pieces.append(Piece("hunk", None, module=module))
        pieces[-1].members.append(index)
        previous = index
    return pieces


def hunk_pieces(patch: list[PatchLine], indices: Iterable[int], module: str | None) -> list[Piece]:
    """One hunk piece per @@ hunk of the patch (files without units)."""
    pieces: dict[int, Piece] = {}
    for index in indices:
        line = patch[index]
        if line.tag == " ":
            continue
        piece = pieces.get(line.hunk)
        if piece is None:
            piece = pieces[line.hunk] = Piece("hunk", None, module=module)
        piece.members.append(index)
    return list(pieces.values())


def merge_small_hunks(pieces: list[Piece], patch: list[PatchLine], min_size: int, max_size: int) -> list[Piece]:
    """Neighbouring hunk pieces with fewer than `min_size` changed lines merge (while they span less than `max_size`)."""
    unit_lines = {i for piece in pieces if piece.kind != "hunk" for i in piece.members}
    merged: list[Piece] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if (
            last is not None and last.kind == "hunk" and piece.kind == "hunk"
            and (len(last.members) < min_size or len(piece.members) < min_size)
            and piece.members[-1] - last.members[0] < max_size
            and not any(i in unit_lines for i in range(last.members[-1] + 1, piece.members[0]))
        ):
            last.members.extend(piece.members)
            continue
        merged.append(piece)
    return merged

