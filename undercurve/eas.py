"""The science in one file: entropy trajectories in, EAS / Mean EAS / PPL / EDIS out.

SPEC sections 1 and 2. The engines (torch exact, vLLM top-K) only compute trajectories fast;
every score is a cheap reduction here, shared by curation, validation and both engines.

- H_t: entropy in bits of the next-token distribution at step t (full vocabulary, or the
  top-K truncation in vLLM's top-K mode).
- Probe trajectory: H_t = H(. | prompt, x_1..x_t, "\\boxed{", a_1..a_{L-1}), t = 1..T-1, where
  x_T is the token holding the last byte of the final answer (scoring/trajectory.py).
- Plain trajectory: H_t = H(. | prompt, x_1..x_t), t = 1..T.
- EAS = sum_{t=1}^{T-1} H_t;  Mean EAS = EAS / (T-1);  PPL = exp(-mean_t log P(x_t | x_<t)).
- EDIS on the plain trajectory H_1..H_T:
    S_burst   = #{t in 1..T-w : H_{t+w} - H_t > tau_b}
    S_rebound = #{t in 2..T   : H_t - min_{s<t} H_s > tau_r}
    EDIS      = (S_burst + S_rebound)/2 * (1 + Var(H)), population variance.
  The paper does not state the log base of tau_b, tau_r: ``EdisParams.units`` says which,
  and is recorded beside every EDIS value.
- Top-K truncation: the entropy left out is at most eps * log2((V-K)/eps), eps = 1 - top-K mass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

LN2 = math.log(2.0)


@dataclass(frozen=True)
class EdisParams:
    """EDIS settings; the only place their defaults are written."""

    window: int = 8  # w: not given by the paper
    tau_burst: float = 1.36
    tau_rebound: float = 1.33
    units: str = "bits"  # the log base the thresholds (and Var) are in: "bits" or "nats"

    def __post_init__(self):
        if self.units not in ("bits", "nats"):
            raise ValueError(f"EDIS units must be 'bits' or 'nats', not {self.units!r}")
        if self.window < 1:
            raise ValueError("EDIS window must be >= 1")

    def as_dict(self) -> dict:
        return asdict(self)


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


def edis(H_bits, params: EdisParams = EdisParams()) -> EDIS:
    """EDIS of the plain trajectory H_1..H_T, given in bits (converted to ``params.units``)."""
    h = np.asarray(H_bits, dtype=np.float64) * (LN2 if params.units == "nats" else 1.0)
    if h.size == 0:
        return EDIS(0, 0, 0.0, 0.0)
    w = params.window
    burst = int(np.sum(h[w:] - h[:-w] > params.tau_burst)) if w < h.size else 0
    running_min = np.minimum.accumulate(h)[:-1]  # min_{s<t} H_s for t = 2..T
    rebound = int(np.sum(h[1:] - running_min > params.tau_rebound))
    var = float(h.var())
    return EDIS(burst, rebound, var, (burst + rebound) / 2.0 * (1.0 + var))


def scores(H, plain_H, logprobs, params: EdisParams = EdisParams(), exact: bool = True) -> dict:
    """The per-sample summary columns from one sample's trajectories.

    ``H``: the EAS trajectory (probe or plain, t = 1..T-1); ``plain_H``: H_1..H_T for EDIS;
    ``logprobs``: log P(x_t | x_<t) of every response token, nats. ``exact`` is False when
    the entropies are top-K truncations: that EDIS is a different quantity, labelled so it is
    never ranked together with exact EDIS.
    """
    e = edis(plain_H, params)
    return {
        "eas": eas(H), "mean_eas": mean_eas(H), "ppl": ppl(logprobs),
        "edis": e.score, "edis_burst": e.burst, "edis_rebound": e.rebound, "edis_var": e.var,
        "edis_units": params.units, "edis_exact": exact,
    }


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


def candidate_signals(H_drawn, mean_logp, vocab_size: int, topk_mass=None, topk_H=None) -> dict:
    """Best-of-N signals of one sampled response x_1..x_R from the distributions p_1..p_R its
    tokens were drawn from (p_k = P(. | prompt, x_<k); validation's best-of-N and top-K table):

    - mean_entropy: sequence entropy, mean_k H(p_k), bits (lower = more confident);
    - self_certainty (Kang et al. 2025): mean_k KL(U || p_k), nats, where
      KL(U || p) = -log V - (1/V) sum_v log p(v); ``mean_logp`` holds (1/V) sum_v log p_k(v)
      (higher = more confident);
    - with the top-K truncation (``topk_mass``, ``topk_H`` = -sum_{top-K} p log2 p): per
      position the top-K mass and the entropy the truncation actually loses, H - topk_H
      (bits; at most ``topk_truncation_bound``). NaN means when R = 0.
    """
    H = np.asarray(H_drawn, dtype=np.float64)
    kl = -math.log(vocab_size) - np.asarray(mean_logp, dtype=np.float64)
    out = {"mean_entropy": float(H.mean()) if H.size else math.nan,
           "self_certainty": float(kl.mean()) if kl.size else math.nan}
    if topk_mass is not None:
        out["topk_mass"] = np.asarray(topk_mass, dtype=np.float64).tolist()
        out["topk_lost"] = (H - np.asarray(topk_H, dtype=np.float64)).tolist()
    return out
