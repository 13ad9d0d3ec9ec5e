"""Confidence intervals for Average Pass@1: a two-level bootstrap over problems and repeats.

A model's Pass@1 on a benchmark is the mean of a (problems x repeats) table of 0/1 scores.
Its uncertainty has two sources: which problems the benchmark happens to hold, and which
samples the model happened to draw. Each bootstrap draw resamples problems with replacement,
then repeats within each drawn problem, and recomputes the mean. Draws are shared by every
model (same problem indices, paired), so the interval of a *difference* between two models
is the interval of the per-draw differences: the honest test of "did this strategy help".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 4000


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def _mean(cells: dict[str, list[np.ndarray]]) -> float:
    """Mean over benchmarks of the mean over checkpoints of Average Pass@1 (the paper's headline)."""
    return float(np.mean([np.mean([c.mean() for c in ckpts]) for ckpts in cells.values()]))


def _draws(tables: dict[str, dict[str, list[np.ndarray]]], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Per model, ``n_boot`` bootstrap values of ``_mean``; one draw of problems and repeats
    per benchmark, shared by every model and checkpoint."""
    rng = np.random.default_rng(seed)
    benchmarks = {tuple(sorted(cells)) for cells in tables.values()}
    if len(benchmarks) != 1:
        raise ValueError(f"models were evaluated on different benchmarks: {sorted(benchmarks)}")
    out = {m: np.zeros(n_boot) for m in tables}
    names = benchmarks.pop()
    for b in names:
        shapes = {c.shape for cells in tables.values() for c in cells[b]}
        if len(shapes) != 1:
            raise ValueError(f"{b}: evaluations disagree on (problems, repeats): {sorted(shapes)}")
        n_p, n_r = shapes.pop()
        p = rng.integers(0, n_p, size=(n_boot, n_p, 1))
        r = rng.integers(0, n_r, size=(n_boot, n_p, n_r))
        for m, cells in tables.items():
            out[m] += np.mean([c[p, r].mean(axis=(1, 2)) for c in cells[b]], axis=0)
    return {m: v / len(names) for m, v in out.items()}


def _interval(value: float, draws: np.ndarray, level: float) -> Interval:
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    return Interval(float(value), float(lo), float(hi))


def pass1_intervals(tables: dict[str, dict[str, list]], baseline: str | None = None, *, level: float = LEVEL,
                    n_boot: int = N_BOOT, seed: int = 0) -> tuple[dict[str, Interval], dict[str, Interval]]:
    """``tables``: model -> benchmark -> one (problems x repeats) 0/1 table per checkpoint,
    problems in the same order for every model.

    -> (Pass@1 with its interval per model, difference to ``baseline`` with its interval per
    other model). Fractions; the point value is the plain mean (``_mean``)."""
    tables = {m: {b: [np.asarray(c, dtype=np.float64) for c in ckpts] for b, ckpts in cells.items()}
              for m, cells in tables.items()}
    draws = _draws(tables, n_boot, seed)
    point = {m: _mean(cells) for m, cells in tables.items()}
    own = {m: _interval(point[m], draws[m], level) for m in tables}
    diffs = {}
    if baseline is not None:
        if baseline not in tables:
            raise ValueError(f"no results for the baseline {baseline!r}")
        diffs = {m: _interval(point[m] - point[baseline], draws[m] - draws[baseline], level)
                 for m in tables if m != baseline}
    return own, diffs
