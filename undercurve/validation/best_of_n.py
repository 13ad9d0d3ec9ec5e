"""Best-of-N answer selection (EDIS paper, arXiv 2602.01288).

Per question, the first N = m*k samples are the candidates. Strategies:

- ``mean``: the expected accuracy of one random candidate (mean correctness of the N);
- ``majority``: plain majority vote over the answered candidates;
- ``edis`` / ``mean_entropy`` (lower is better) and ``self_certainty`` (higher is better):
  keep the k best-scored answered candidates and aggregate them by score-weighted Borda.

Score-weighted Borda (as used here): every kept candidate adds ``1 / (s + eps)`` to the tally
of its answer, ``s`` being its score oriented so that lower is better and >= 0 (for
self-certainty, ``s = max(kept) - sc``); eps = 0.1. The largest tally wins; ties go to the
answer of the better-scored candidate. Candidates without an answer never vote (a question
with none answered is wrong).
"""

from __future__ import annotations

import math
from collections import Counter

import polars as pl

SCORED = {"edis": False, "mean_entropy": False, "self_certainty": True}  # name -> higher is better
STRATEGIES = ("mean", "majority", *SCORED)


def majority_vote(answers) -> str | None:
    """Most frequent non-null answer; ties -> the one seen first."""
    given = [a for a in answers if a is not None]
    if not given:
        return None
    counts = Counter(given)
    return max(counts, key=lambda a: (counts[a], -given.index(a)))


def keep_best(answers, scores, k: int, higher_is_better: bool = False) -> list[int]:
    """Indices of the k best-scored answered candidates (stable: earlier wins a tie)."""
    idx = [i for i, (a, s) in enumerate(zip(answers, scores))
           if a is not None and s is not None and not math.isnan(float(s))]
    idx.sort(key=lambda i: -float(scores[i]) if higher_is_better else float(scores[i]))
    return idx[:k]


def weighted_borda(answers, scores, k: int, higher_is_better: bool = False, eps: float = 0.1) -> str | None:
    """Keep the k best candidates, then vote with weights 1/(s + eps) (see module doc)."""
    kept = keep_best(answers, scores, k, higher_is_better)
    if not kept:
        return None
    s = [float(scores[i]) for i in kept]
    if higher_is_better:
        top = max(s)
        s = [top - v for v in s]
    if min(s) < 0:
        raise ValueError("lower-is-better scores must be >= 0 for the 1/(s + eps) weight")
    tally: dict[str, float] = {}
    first: dict[str, int] = {}
    for rank, (i, si) in enumerate(zip(kept, s)):
        a = answers[i]
        tally[a] = tally.get(a, 0.0) + 1.0 / (si + eps)
        first.setdefault(a, rank)
    return max(tally, key=lambda a: (tally[a], -first[a]))


def select_answer(strategy: str, answers, scores=None, k: int = 1, eps: float = 0.1) -> str | None:
    if strategy == "majority":
        return majority_vote(answers)
    if strategy in SCORED:
        return weighted_borda(answers, scores, k, SCORED[strategy], eps)
    raise ValueError(f"unknown strategy {strategy!r}")


def compare_strategies(cands: pl.DataFrame, ms, k: int, eps: float = 0.1) -> pl.DataFrame:
    """Accuracy of every strategy for every m.

    ``cands``: one row per sample with id, rollout, answer (canonical, null = none), correct,
    and the score columns (edis, mean_entropy, self_certainty). A selected answer is correct
    when a candidate giving that answer is marked correct.
    """
    groups = [g.sort("rollout") for _, g in cands.group_by("id", maintain_order=True)]
    rows = []
    for m in ms:
        N = m * k
        hits = {s: 0.0 for s in STRATEGIES}
        counted = 0
        for g in groups:
            g = g.head(N)
            if g.height < N:
                continue  # fewer samples than N for this question
            counted += 1
            answers = g["answer"].to_list()
            correct = g["correct"].fill_null(False).to_list()
            right = {a for a, c in zip(answers, correct) if c and a is not None}
            hits["mean"] += sum(correct) / N
            for strategy in STRATEGIES[1:]:
                scores = g[strategy].to_list() if strategy in SCORED else None
                hits[strategy] += select_answer(strategy, answers, scores, k, eps) in right
        for s in STRATEGIES:
            rows.append({"m": m, "k": k, "N": N, "strategy": s, "questions": counted,
                         "accuracy": hits[s] / counted if counted else math.nan})
    return pl.DataFrame(rows, schema={"m": pl.Int64, "k": pl.Int64, "N": pl.Int64, "strategy": pl.Utf8,
                                      "questions": pl.Int64, "accuracy": pl.Float64})
