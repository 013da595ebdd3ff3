"""Small summary figures the data and training stages report (one copy each).

    length_percentiles(values)  {"mean", "p50", "p90", "p99", "max"} of token counts
    pad_fraction(batches)       share of positions that are padding when each batch is
                                padded to its longest member
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def length_percentiles(values: Iterable[int] | np.ndarray) -> dict:
    """Mean, median, 90th and 99th percentile and maximum of a list of lengths (zeros when empty)."""
    values = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.int64)
    if values.size == 0:
        return {"mean": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": round(float(values.mean()), 2), "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": int(values.max())}


def pad_fraction(batches: Iterable[Sequence[int]]) -> float:
    """Share of pad positions when every batch (a list of sequence lengths) is padded to its longest.

    0.0 for no batches; 1 - real tokens / padded positions otherwise.
    """
    real = padded = 0
    for lengths in batches:
        if len(lengths):
            real += int(sum(lengths))
            padded += int(max(lengths)) * len(lengths)
    return 1 - real / padded if padded else 0.0
