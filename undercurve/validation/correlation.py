"""Pearson r (with its two-sided p-value, scipy, and a 95% interval) of each metric against
answer entropy."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

METRICS = ("eas", "mean_eas", "ppl", "response_tokens", "edis")  # response_tokens: the paper's Length
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


def r_interval(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Fisher z interval of a Pearson r from n pairs: tanh(atanh(r) +- z_q / sqrt(n - 3));
    NaN when n <= 3 or r is undefined."""
    from scipy import stats

    if n <= 3 or not math.isfinite(r):
        return math.nan, math.nan
    z, half = math.atanh(max(min(r, 1 - 1e-15), -1 + 1e-15)), stats.norm.ppf(0.5 + level / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def correlation_table(df: pl.DataFrame, metrics=METRICS, targets=TARGETS) -> pl.DataFrame:
    """One row per (metric, target): r, its 95% interval (r_low, r_high), p, n. Missing
    columns are skipped."""
    rows = []
    for target in targets:
        if target not in df.columns:
            continue
        for m in metrics:
            if m not in df.columns:
                continue
            r, p, n = pearson(df[m].cast(pl.Float64).fill_null(math.nan).to_numpy(),
                              df[target].cast(pl.Float64).fill_null(math.nan).to_numpy())
            lo, hi = r_interval(r, n)
            rows.append({"metric": m, "target": target, "r": r, "r_low": lo, "r_high": hi, "p": p, "n": n})
    return pl.DataFrame(rows, schema={"metric": pl.Utf8, "target": pl.Utf8, "r": pl.Float64, "r_low": pl.Float64,
                                      "r_high": pl.Float64, "p": pl.Float64, "n": pl.Int64})


def regression_line(x, y) -> tuple[float, float] | None:
    """Least-squares slope and intercept over the finite pairs (None when undefined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2 or np.ptp(a[keep]) == 0:
        return None
    slope, intercept = np.polyfit(a[keep], b[keep], 1)
    return float(slope), float(intercept)
