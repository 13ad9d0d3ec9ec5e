"""Bootstrap intervals for Pass@1 (undercurve.stats) against a slow reference and known truths."""

from __future__ import annotations

import numpy as np
import pytest

from undercurve.stats import pass1_intervals


def _slow_draws(tables, n_boot, seed):
    """The two-level bootstrap written as plain loops, consuming the generator in the same order."""
    rng = np.random.default_rng(seed)
    names = sorted(next(iter(tables.values())))
    out = {m: [0.0] * n_boot for m in tables}
    for b in names:
        n_p, n_r = np.asarray(next(iter(tables.values()))[b][0]).shape
        p = rng.integers(0, n_p, size=(n_boot, n_p, 1))
        r = rng.integers(0, n_r, size=(n_boot, n_p, n_r))
        for m, cells in tables.items():
            for k in range(n_boot):
                per_ckpt = []
                for c in cells[b]:
                    vals = [c[p[k, i, 0]][r[k, i, j]] for i in range(n_p) for j in range(n_r)]
                    per_ckpt.append(sum(vals) / len(vals))
                out[m][k] += sum(per_ckpt) / len(per_ckpt) / len(names)
    return out


def test_intervals_match_a_slow_reference_on_random_tables():
    rng = np.random.default_rng(7)
    tables = {m: {"aime24": [rng.integers(0, 2, (9, 3)).tolist() for _ in range(2)],
                  "aime25": [rng.integers(0, 2, (5, 3)).tolist() for _ in range(2)]}
              for m in ("random", "eas", "length")}
    n_boot, level = 300, 0.9
    own, diffs = pass1_intervals(tables, "random", n_boot=n_boot, seed=3, level=level)
    slow = _slow_draws(tables, n_boot, 3)
    for m in tables:
        point = np.mean([np.mean([np.mean(c) for c in cells]) for cells in tables[m].values()])
        lo, hi = np.quantile(slow[m], [0.05, 0.95])
        # float64 sums of <= 27 terms: agreement to a few ulps of 1
        assert own[m].value == pytest.approx(point, abs=1e-12)
        assert (own[m].low, own[m].high) == pytest.approx((lo, hi), abs=1e-12)
        if m != "random":
            d = np.array(slow[m]) - np.array(slow["random"])
            assert (diffs[m].low, diffs[m].high) == pytest.approx(tuple(np.quantile(d, [0.05, 0.95])), abs=1e-12)


def test_identical_models_differ_by_exactly_zero_and_opposites_by_one():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 2, (12, 4))
    tables = {"random": {"b": [t]}, "same": {"b": [t.copy()]}, "all": {"b": [np.ones((12, 4))]},
              "none": {"b": [np.zeros((12, 4))]}}
    own, diffs = pass1_intervals(tables, "none", n_boot=200)
    assert (diffs["random"].low, diffs["random"].high) == (diffs["same"].low, diffs["same"].high)
    assert (diffs["all"].value, diffs["all"].low, diffs["all"].high) == (1.0, 1.0, 1.0)
    assert (own["none"].low, own["none"].high) == (0.0, 0.0)


def test_coverage_of_a_known_pass_rate():
    """95% intervals over 24 problems x 4 repeats cover the true Pass@1 in about 95% of trials.

    Each problem has its own pass probability (drawn once per trial around 0.3), which is
    the between-problem variance the problem level of the bootstrap is there for. The
    percentile bootstrap at n=24 under-covers a little; with 300 trials the binomial
    standard error of the coverage is 1.3 points, so [0.88, 0.99] fails only on a real fault
    (an interval over repeats alone covers 84% here: 253 of 300)."""
    rng = np.random.default_rng(11)
    trials, covered = 300, 0
    for _ in range(trials):
        p = rng.beta(3, 7, size=24)  # mean 0.3
        table = (rng.random((24, 4)) < p[:, None]).astype(float)
        own, _ = pass1_intervals({"m": {"b": [table]}}, n_boot=400, seed=int(rng.integers(1 << 30)))
        covered += own["m"].contains(0.3)
    assert 0.88 <= covered / trials <= 0.99


def test_models_must_share_benchmarks_and_shapes():
    with pytest.raises(ValueError, match="different benchmarks"):
        pass1_intervals({"a": {"x": [[[1]]]}, "b": {"y": [[[1]]]}})
    with pytest.raises(ValueError, match="disagree"):
        pass1_intervals({"a": {"x": [[[1, 0]]]}, "b": {"x": [[[1]]]}})


def test_summary_says_which_differences_are_inside_the_noise():
    from undercurve.report import pass1_summary, summary_markdown

    rng = np.random.default_rng(5)
    noisy = rng.integers(0, 2, (20, 4))
    rows = [{"strategy": s, "benchmark": "aime24", "table": t.tolist()} for s, t in
            [("random", noisy), ("length", noisy[::-1].copy()), ("eas", np.ones((20, 4))), ("base", np.zeros((20, 4)))]]
    summary = pass1_summary(rows)
    assert summary["strategy"].to_list() == ["base", "random", "length", "eas"]
    verdict = dict(summary.select("strategy", "verdict").iter_rows())
    assert verdict == {"base": "worse than random", "random": "baseline", "length": "inside the noise",
                       "eas": "better than random"}
    md = summary_markdown(summary)
    assert "Inside the noise here: length" in md and "| eas | 100.0 [100.0, 100.0] |" in md
