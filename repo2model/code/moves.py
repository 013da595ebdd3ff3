"""Moves and renames in one commit: a DELETED_X and a NEW_X chunk with the same body become one MOVED_X
chunk, with the same body under a new name one RENAMED_X chunk."""

from __future__ import annotations

import collections
import dataclasses
import re

from repo2model.core.records import Chunk, change_type


def _normalize(text: str | None) -> str:
    return " ".join((text or "").split())


def pair_moves(chunks: list[Chunk]) -> list[Chunk]:
    """DELETED_X + NEW_X with the same body in one commit -> one MOVED_X (or RENAMED_X) chunk."""
    deleted = [i for i, c in enumerate(chunks) if c.change_type.startswith("DELETED_") and c.kind != "hunk" and c.part is None]
    added = [i for i, c in enumerate(chunks) if c.change_type.startswith("NEW_") and c.kind != "hunk" and c.part is None]
    if not deleted or not added:
        return chunks
    by_body: dict[tuple, list[int]] = collections.defaultdict(list)
    by_shape: dict[tuple, list[int]] = collections.defaultdict(list)
    for i in deleted:
        chunk = chunks[i]
        by_body[(_family(chunk.kind), _normalize(chunk.before))].append(i)
        name = _bare_name(chunk.symbol)
        if name:
            by_shape[(_family(chunk.kind), _normalize(_replace_name(chunk.before, name)))].append(i)
    used: set[int] = set()
    replaced: dict[int, Chunk] = {}
    for i in added:
        chunk = chunks[i]
        prefix = "MOVED"
        candidates = [j for j in by_body.get((_family(chunk.kind), _normalize(chunk.after)), []) if j not in used]
        if not candidates:
            name = _bare_name(chunk.symbol)
            if not name:
                continue
            shape = (_family(chunk.kind), _normalize(_replace_name(chunk.after, name)))
            candidates = [j for j in by_shape.get(shape, []) if j not in used and _bare_name(chunks[j].symbol) != name]
            prefix = "RENAMED"
        if not candidates:
            continue
        j = candidates[0]
        used.add(j)
        source = chunks[j]
        replaced[i] = dataclasses.replace(
            chunk,
            change_type=change_type(prefix, chunk.kind),
            before=source.before,
            old_span=source.old_span,
            old_file=source.file if source.file != chunk.file else source.old_file,
            old_symbol=source.symbol if prefix == "RENAMED" else None,
            diff="\n".join(part for part in (source.diff, chunk.diff) if part),
        )
    return [replaced.get(i, c) for i, c in enumerate(chunks) if i not in used]


def _family(kind: str) -> str:
    return "fn" if kind in ("function", "method", "test") else kind


def _bare_name(symbol: str | None) -> str:
    if not symbol:
        return ""
    return re.split(r"::|\.", symbol)[-1]


def _replace_name(text: str | None, name: str) -> str:
    return re.sub(rf"\b{re.escape(name)}\b", "\x00", text or "", count=1)

