"""The entropy maths (SPEC sections 1 and 2): hand-checkable values, and slow loop references
on random trajectories."""

import math

import numpy as np
import pytest

from undercurve import eas as metrics
from undercurve.eas import EdisParams


def test_eas_mean_eas_ppl():
    assert metrics.eas([1.0, 2.0, 0.5]) == pytest.approx(3.5)
    assert metrics.mean_eas([1.0, 2.0, 0.5]) == pytest.approx(3.5 / 3)
    assert math.isnan(metrics.mean_eas([]))
    # log-probs ln(1/2), ln(1/8): mean -2 ln 2 -> ppl 4
    assert metrics.ppl([math.log(0.5), math.log(0.125)]) == pytest.approx(4.0)
    assert math.isnan(metrics.ppl([]))


def test_edis_one_burst_one_rebound():
    H = [0.0, 0.0, 0.0, 2.0, 0.0, 0.0]
    e = metrics.edis(H, EdisParams(window=2, tau_burst=1.36, tau_rebound=1.33))
    # bursts: H[t+2]-H[t] for t=1..4 -> 0, 2, 0, -2: one; rebounds: only t=4 (2 - 0)
    assert (e.burst, e.rebound) == (1, 1)
    assert e.var == pytest.approx(5 / 9)  # population variance of the values above
    assert e.score == pytest.approx((1 + 1) / 2 * (1 + 5 / 9))


def test_edis_rebounds_after_a_dip_and_window_longer_than_trajectory():
    H = [5.0, 4.0, 3.0, 1.0, 2.5, 3.0, 0.5]
    e = metrics.edis(H, EdisParams(window=8))
    assert e.burst == 0  # T <= w: no window fits
    assert e.rebound == 2  # 2.5 - 1 and 3 - 1 exceed 1.33; 0.5 does not
    assert e.score == pytest.approx(1.0 * (1 + np.var(H)))


def test_edis_burst_counts_every_window_and_thresholds_are_settings():
    H = [0.0, 0.0, 3.0, 3.0, 3.0]
    assert metrics.edis(H, EdisParams(window=1)).burst == 1
    assert metrics.edis(H, EdisParams(window=2)).burst == 2  # (1,3) and (2,4)
    assert metrics.edis(H, EdisParams(window=2, tau_burst=3.5)).burst == 0
    assert metrics.edis(H, EdisParams(window=2, tau_rebound=2.9)).rebound == 3
    assert metrics.edis(H, EdisParams(window=2, tau_rebound=3.1)).rebound == 0
    assert metrics.edis([]).score == 0.0


def test_edis_stable_trajectory_scores_zero():
    assert metrics.edis([2.0] * 20).score == 0.0


def test_topk_bound_matches_paper_table1_percentiles():
    V, K = 151_665, 20
    # paper Table 1: p95 mass 99.52% -> 0.12 bits, p99 97.54% -> 0.56 bits
    assert metrics.topk_truncation_bound(0.9952, V, K) == pytest.approx(0.12, abs=0.01)
    assert metrics.topk_truncation_bound(0.9754, V, K) == pytest.approx(0.56, abs=0.01)  # paper rounds the mass
    assert metrics.topk_truncation_bound(1.0, V, K) == 0.0
    assert metrics.topk_truncation_bound(1.0 + 1e-9, V, K) == 0.0
    arr = metrics.topk_truncation_bound(np.array([1.0, 0.9]), V, K)
    assert arr[0] == 0.0 and arr[1] == pytest.approx(0.1 * math.log2((V - K) / 0.1))


def test_topk_bound_is_an_upper_bound_on_truncated_entropy():
    rng = np.random.default_rng(0)
    V, K = 500, 20
    for _ in range(20):
        p = rng.dirichlet(np.full(V, 0.05))
        top = np.sort(p)[::-1][:K]
        truncated = -(top * np.log2(top)).sum()
        assert metrics.entropy_bits(p) - truncated <= metrics.topk_truncation_bound(top.sum(), V, K) + 1e-12


def test_decayed_option_probability_against_loop():
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(4), size=7)
    got = metrics.decayed_option_probability(P, alpha=0.5)
    for t in range(7):
        want = sum((t - k + 1) ** -0.5 * P[k] for k in range(t + 1))
        np.testing.assert_allclose(got[t], want, rtol=1e-12)
    # first step is P_1 itself; second is P_2 + P_1 / sqrt(2)
    np.testing.assert_allclose(got[1], P[1] + P[0] / math.sqrt(2))


def slow_edis(H, w, tb, tr):
    """SPEC section 2 written as loops over 1-based t, no numpy tricks."""
    T = len(H)
    h = [None] + list(H)  # h[1..T]
    burst = sum(1 for t in range(1, T - w + 1) if h[t + w] - h[t] > tb)
    rebound = sum(1 for t in range(2, T + 1) if h[t] - min(h[1:t]) > tr)
    mean = sum(H) / T
    var = sum((x - mean) ** 2 for x in H) / T
    return burst, rebound, var, (burst + rebound) / 2 * (1 + var)


def test_scores_against_slow_reference_on_random_trajectories():
    rng = np.random.default_rng(7)
    for _ in range(200):
        T = int(rng.integers(1, 60))
        H = rng.gamma(1.5, 1.0, size=T)  # bits
        w = int(rng.integers(1, 12))
        tb, tr = rng.uniform(0.2, 3.0, size=2)
        units = str(rng.choice(["bits", "nats"]))
        p = EdisParams(window=w, tau_burst=float(tb), tau_rebound=float(tr), units=units)
        Hu = H * (math.log(2) if units == "nats" else 1.0)
        burst, rebound, var, score = slow_edis(list(Hu), w, tb, tr)
        lp = -rng.gamma(1.0, 1.0, size=T)
        got = metrics.scores(H[:-1], H, lp, p, exact=bool(rng.integers(0, 2)))
        assert (got["edis_burst"], got["edis_rebound"]) == (burst, rebound)
        # float64 sums of < 60 terms of magnitude < 30: agreement to 1e-12 relative
        assert got["edis_var"] == pytest.approx(var, rel=1e-12, abs=1e-12)
        assert got["edis"] == pytest.approx(score, rel=1e-12, abs=1e-12)
        assert got["eas"] == pytest.approx(sum(H[:-1]), rel=1e-12, abs=1e-12)
        if T > 1:
            assert got["mean_eas"] == pytest.approx(sum(H[:-1]) / (T - 1), rel=1e-12)
        assert got["ppl"] == pytest.approx(math.exp(-sum(lp) / T), rel=1e-12)
        assert got["edis_units"] == units


def test_edis_units_convert_bits_to_nats():
    # 2 bits = 1.386 nats: above tau 1.36 in bits, the same jump in nats is 1.386 > 1.36 too,
    # but 1.9 bits = 1.317 nats falls below 1.33
    H = [0.0, 1.9]
    assert metrics.edis(H, EdisParams(window=1, units="bits")).rebound == 1
    assert metrics.edis(H, EdisParams(window=1, units="nats")).rebound == 0
    with pytest.raises(ValueError, match="units"):
        EdisParams(units="decibans")
