"""Top-K entropy engine through vLLM: the paper's path (SPEC sections 1 and 3).

Runs inside the vLLM environment (``undercurve.vllm_worker``). Rows have the columns of the
torch engine's rows (``undercurve.scoring.torch_engine.TorchScorer._row``), with the top-K
columns filled.

- plain: one request prompt + x_1..x_R (token ids, so tokenisation is the trajectory's) with
  ``prompt_logprobs=K`` and ``max_tokens=1, logprobs=K`` (the latter gives H_R when the answer
  ends the response). H_1..H_T, the response log-probs (PPL) and EDIS come from it.
- probe: the plain request, plus one request per t = 1..T-1 with context
  prompt + x_1..x_t + suffix_ids and ``max_tokens=1, logprobs=K``: the top-K distribution of
  the token AFTER the suffix, i.e. the torch engine's last suffix column. Entropies at the
  earlier suffix positions would need prompt_logprobs, which turns prefix caching off, so
  ``suffix_entropy`` holds only that last column ([T-1, 1]).

Entropies are truncated: -sum_{top K} p log2 p (not renormalised), with kept mass and the
bound eps*log2((V-K)/eps), eps = 1 - mass, per position. ``topk_bound`` is the sum of the
per-position bounds over the EAS positions, i.e. a bound on |EAS_topK - EAS_exact|.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from undercurve import eas
from undercurve.scoring.trajectory import Trajectory

_LN2 = math.log(2.0)


def position_stats(flat, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per position of a vLLM ``FlatLogprobs``: (truncated entropy bits, top-K mass, log-prob
    of the scored token in nats); NaN where vLLM gave nothing (first prompt position).

    vLLM stores each position as [scored token (its own rank), top-1, ..., top-K]; the scored
    token repeats when it is in the top K, so the first entry is skipped, never summed.
    """
    starts = np.asarray(flat.start_indices, dtype=np.int64)
    counts = np.asarray(flat.end_indices, dtype=np.int64) - starts
    lp = np.asarray(flat.logprobs, dtype=np.float64)
    ranks = np.asarray(flat.ranks, dtype=np.int64)
    n = starts.size
    pos = np.repeat(np.arange(n), counts)
    first = np.zeros(lp.size, dtype=bool)
    first[starts[counts > 0]] = True
    top = ~first & (ranks <= k)
    p = np.exp(lp)
    plogp = np.where(p > 0, p * lp, 0.0)  # exp(-inf) = 0 contributes 0, not NaN
    H = np.bincount(pos[top], weights=-plogp[top], minlength=n) / _LN2
    mass = np.bincount(pos[top], weights=p[top], minlength=n)
    scored = np.full(n, np.nan)
    scored[pos[first]] = lp[first]
    empty = counts == 0
    H[empty] = np.nan
    mass[empty] = np.nan
    return H, mass, scored


class VllmScorer:
    """Top-K scorer on an existing ``vllm.LLM`` (built with max_logprobs >= top_k and, for
    probe mode, prefix caching on). ``top_k=-1`` means the full vocabulary (exact, slow)."""

    def __init__(
        self,
        llm,
        top_k: int = 20,
        probe_batch: int = 256,
        edis: eas.EdisParams = eas.EdisParams(),
    ):
        self.llm = llm
        self.vocab_size = llm.llm_engine.model_config.get_vocab_size()
        self.top_k = top_k
        self.k = self.vocab_size if top_k == -1 else min(top_k, self.vocab_size)
        self.probe_batch = probe_batch
        self.edis = edis

    def _params(self, prompt_logprobs: bool):
        from vllm import SamplingParams

        # greedy + raw logprobs: the sampled token is irrelevant, the distribution is the model's
        return SamplingParams(
            max_tokens=1, temperature=0.0, logprobs=self.top_k, detokenize=False, flat_logprobs=True,
            prompt_logprobs=self.top_k if prompt_logprobs else None,
        )

    def _generate(self, token_lists: list[list[int]], params):
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in token_lists]
        return self.llm.generate(prompts, params, use_tqdm=False)

    # ---------------------------------------------------------------- public
    def score(
        self,
        trajectories: list[Trajectory],
        mode: str = "probe",
        progress: Callable[[int, int], None] | None = None,
    ) -> list[dict]:
        """One row per trajectory, in input order."""
        if mode not in ("probe", "plain"):
            raise ValueError(f"mode must be 'probe' or 'plain', not {mode!r}")
        plain = self._plain(trajectories)
        probe = self._probe(trajectories, progress) if mode == "probe" else None
        rows = []
        for i, t in enumerate(trajectories):
            rows.append(self._row(t, mode, **plain[i], probe=None if probe is None else probe[i]))
        return rows

    # ---------------------------------------------------------------- passes
    def _plain(self, trajs: list[Trajectory]) -> list[dict]:
        outs = self._generate([t.prompt_ids + t.response_ids for t in trajs], self._params(True))
        res = []
        for t, o in zip(trajs, outs):
            H, mass, scored = position_stats(o.prompt_logprobs, self.k)
            Hn, mn, _ = position_stats(o.outputs[0].logprobs, self.k)
            # prompt_logprobs[j] is the distribution after tokens 0..j-1, so index P+k holds
            # H_k (after prompt + x_1..x_k), k = 0..R-1; the sampled token's entry gives H_R
            H_all = np.concatenate([H[t.P :], Hn[:1]])
            m_all = np.concatenate([mass[t.P :], mn[:1]])
            res.append({"H_all": H_all, "mass_all": m_all, "logprobs": scored[t.P : t.P + t.length]})
        return res

    def _probe(self, trajs: list[Trajectory], progress=None) -> list[dict]:
        """H and mass of the next token after the suffix, for every (sample, t), in batches."""
        work = [(i, t) for i, tr in enumerate(trajs) for t in range(1, tr.T)]
        H = [np.zeros(tr.T - 1) for tr in trajs]
        M = [np.zeros(tr.T - 1) for tr in trajs]
        params = self._params(False)
        for s in range(0, len(work), self.probe_batch):
            chunk = work[s : s + self.probe_batch]
            # ascending t within a sample: later contexts extend earlier ones, so their full
            # KV blocks are already in the prefix cache
            toks = [trajs[i].prompt_ids + trajs[i].response_ids[:t] + trajs[i].suffix_ids for i, t in chunk]
            for (i, t), o in zip(chunk, self._generate(toks, params)):
                h, m, _ = position_stats(o.outputs[0].logprobs, self.k)
                H[i][t - 1], M[i][t - 1] = h[0], m[0]
            if progress:
                progress(min(s + self.probe_batch, len(work)), len(work))
        return [{"H": h, "mass": m} for h, m in zip(H, M)]

    # ---------------------------------------------------------------- rows
    def _row(self, t: Trajectory, mode: str, H_all, mass_all, logprobs, probe=None) -> dict:
        plain_H = H_all[1 : t.T + 1]  # H_1..H_T, as the torch engine
        if mode == "probe":
            H, mass = probe["H"], probe["mass"]
        else:
            H, mass = plain_H[: t.T - 1], mass_all[1 : t.T]
        exact = self.k >= self.vocab_size
        bound = np.zeros_like(mass) if exact else eas.topk_truncation_bound(mass, self.vocab_size, self.k)
        return {
            "id": t.id, "engine": "vllm", "mode": mode, "T": t.T, "response_tokens": t.length,
            # top-K entropies: EDIS from them is labelled inexact and never ranked with exact EDIS
            **eas.scores(H, plain_H, logprobs, self.edis, exact=exact),
            "topk_mass_mean": float(np.mean(mass)), "topk_mass_min": float(np.min(mass)),
            "topk_bound": float(np.sum(bound)),
            "entropy": H.tolist(), "plain_entropy": plain_H.tolist(),
            "suffix_entropy": [[h] for h in H.tolist()] if mode == "probe" else None,
        }
