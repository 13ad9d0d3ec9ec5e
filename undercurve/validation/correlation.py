"""Pearson r (with its two-sided p-value, scipy) of each metric against answer entropy."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

METRICS = ("eas", "mean_eas", "ppl", "length", "edis")
TARGETS = ("answer_entropy", "correctness_entropy")


def pearson(x, y) -> tuple[float, float, int]:
    """(r, p, n) over the pairs where both values are finite. NaN r/p when n < 3 or either
    side is constant (r is undefined there); scipy.stats.pearsonr otherwise."""
    from scipy import stats

    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"x and y differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan, math.nan, n
    res = stats.pearsonr(a, b)
    return float(res.statistic), float(res.pvalue), n


def correlation_table(df: pl.DataFrame, metrics=METRICS, targets=TARGETS) -> pl.DataFrame:
    """One row per (metric, target): r, p, n. Missing columns are skipped."""
    rows = []
    for target in targets:
        if target not in df.columns:
            continue
        for m in metrics:
            if m not in df.columns:
                continue
            r, p, n = pearson(df[m].cast(pl.Float64).fill_null(math.nan).to_numpy(),
                              df[target].cast(pl.Float64).fill_null(math.nan).to_numpy())
            rows.append({"metric": m, "target": target, "r": r, "p": p, "n": n})
    return pl.DataFrame(rows, schema={"metric": pl.Utf8, "target": pl.Utf8, "r": pl.Float64, "p": pl.Float64, "n": pl.Int64})


def regression_line(x, y) -> tuple[float, float] | None:
    """Least-squares slope and intercept over the finite pairs (None when undefined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2 or np.ptp(a[keep]) == 0:
        return None
    slope, intercept = np.polyfit(a[keep], b[keep], 1)
    return float(slope), float(intercept)
