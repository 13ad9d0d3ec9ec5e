"""Entropy-trajectory maths (SPEC sections 1 and 2), pure numpy.

Entropies are in bits. The engines produce the trajectories; everything here is a cheap
reduction over them, so it is shared by the torch and vLLM engines.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


def eas(H) -> float:
    """EAS = sum_{t=1}^{T-1} H_t over the probe (or plain) entropies given."""
    return float(np.sum(np.asarray(H, dtype=np.float64)))


def mean_eas(H) -> float:
    """EAS / (T-1); NaN for an empty trajectory."""
    h = np.asarray(H, dtype=np.float64)
    return float(h.mean()) if h.size else float("nan")


def ppl(logprobs) -> float:
    """Perplexity exp(-mean log P(x_t|x_<t)); ``logprobs`` in nats. NaN when empty."""
    lp = np.asarray(logprobs, dtype=np.float64)
    return float(np.exp(-lp.mean())) if lp.size else float("nan")


class EDIS(NamedTuple):
    burst: int
    rebound: int
    var: float
    score: float


def edis(H, window: int = 8, tau_burst: float = 1.36, tau_rebound: float = 1.33) -> EDIS:
    """EDIS of the plain trajectory H_1..H_T.

    S_burst   = #{t in 1..T-w : H_{t+w} - H_t > tau_b}
    S_rebound = #{t in 2..T   : H_t - min_{s<t} H_s > tau_r}
    EDIS      = (S_burst + S_rebound)/2 * (1 + Var(H)), population variance.
    The thresholds are in the units of H (bits here).
    """
    h = np.asarray(H, dtype=np.float64)
    if h.size == 0:
        return EDIS(0, 0, 0.0, 0.0)
    burst = int(np.sum(h[window:] - h[:-window] > tau_burst)) if 0 < window < h.size else 0
    running_min = np.minimum.accumulate(h)[:-1]  # min_{s<t} H_s for t = 2..T
    rebound = int(np.sum(h[1:] - running_min > tau_rebound))
    var = float(h.var())
    return EDIS(burst, rebound, var, (burst + rebound) / 2.0 * (1.0 + var))


def topk_truncation_bound(mass, vocab_size: int, k: int):
    """Upper bound (bits) on the entropy a top-K truncation leaves out.

    eps = 1 - mass (probability outside the top K); bound = eps * log2((V-K)/eps),
    0 where eps <= 0. Scalar in, float out; array in, array out.
    """
    eps = 1.0 - np.asarray(mass, dtype=np.float64)
    safe = np.where(eps > 0, eps, 1.0)  # avoid log of 0; those entries are zeroed below
    out = np.where(eps > 0, safe * np.log2((vocab_size - k) / safe), 0.0)
    return float(out) if out.ndim == 0 else out


def decayed_option_probability(P, alpha: float = 0.5) -> np.ndarray:
    """P~_t(v) = sum_{k<=t} (t-k+1)^(-alpha) P_k(v) for P of shape [T, options]."""
    p = np.asarray(P, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError("P must be [T, options]")
    T = p.shape[0]
    weights = np.arange(1, T + 1, dtype=np.float64) ** (-alpha)  # weight of lag d = t-k is (d+1)^-alpha
    return np.stack([np.convolve(p[:, j], weights)[:T] for j in range(p.shape[1])], axis=1)


def entropy_bits(probs) -> float:
    """Entropy in bits of a discrete distribution (zeros ignored); used by tests and validation."""
    p = np.asarray(probs, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) if p.size else 0.0


LN2 = math.log(2.0)
