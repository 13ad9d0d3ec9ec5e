"""Frame-level scoring: samples in, one score row per sample out, unscorable rows set aside."""

from __future__ import annotations

import polars as pl

from undercurve.answers import DEFAULT_BOX_OPENERS
from undercurve.eas import EdisParams
from undercurve.scoring.trajectory import Trajectory, build_trajectory

SCORE_SCHEMA = {
    "id": pl.Utf8,
    "engine": pl.Utf8,
    "mode": pl.Utf8,
    "T": pl.Int64,
    "length": pl.Int64,
    "eas": pl.Float64,
    "mean_eas": pl.Float64,
    "ppl": pl.Float64,
    "edis": pl.Float64,
    "edis_burst": pl.Int64,
    "edis_rebound": pl.Int64,
    "edis_var": pl.Float64,
    "edis_units": pl.Utf8,  # the log base of EDIS's thresholds and variance
    "edis_exact": pl.Boolean,  # False: from top-K truncated entropies (a different quantity)
    "topk_mass_mean": pl.Float64,
    "topk_mass_min": pl.Float64,
    "topk_bound": pl.Float64,
    "entropy": pl.List(pl.Float64),
    "plain_entropy": pl.List(pl.Float64),
    "suffix_entropy": pl.List(pl.List(pl.Float64)),
}

DEFAULTS = {
    "engine": "torch",
    "mode": "probe",
    "answer_prefix_tokens": 0,
    "batch_tokens": 16384,
    "device": "auto",
    "dtype": "auto",
    "edis": {},  # EdisParams fields; defaults in undercurve.eas
    "box_openers": list(DEFAULT_BOX_OPENERS),
}


def build_trajectories(df: pl.DataFrame, tokenizer, answer_prefix_tokens: int = 0,
                       box_openers=DEFAULT_BOX_OPENERS):
    """(trajectories, set-aside rows ``id, source, reason, detail``)."""
    trajs: list[Trajectory] = []
    aside: list[dict] = []
    for row in df.iter_rows(named=True):
        t = build_trajectory(row, tokenizer, answer_prefix_tokens, tuple(box_openers))
        if isinstance(t, str):
            tail = (row.get("response") or "")[-200:]
            aside.append({"id": row.get("id"), "source": row.get("source"), "reason": t, "detail": tail})
        else:
            trajs.append(t)
    return trajs, aside


def score_frame(df: pl.DataFrame, settings: dict, scorer=None) -> tuple[pl.DataFrame, list[dict]]:
    """Score every scorable row of ``df`` (columns id, source?, prompt, response, answer).

    ``settings``: model, mode, answer_prefix_tokens, batch_tokens, device, dtype, edis (a dict of
    ``EdisParams`` fields), box_openers; optional engine (default "torch"), chunk_positions,
    probe_chunk (TorchScorer tuning). ``scorer`` reuses an already loaded ``TorchScorer``
    (its own EDIS/batch settings then apply). Rows keep the order of ``df``.
    """
    s = {**DEFAULTS, **settings}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(s["model"]))
    trajs, aside = build_trajectories(df, tokenizer, int(s["answer_prefix_tokens"]), s["box_openers"])
    if s["engine"] == "vllm":
        raise NotImplementedError("runs in the vLLM environment")
    if s["engine"] != "torch":
        raise ValueError(f"unknown engine {s['engine']!r}")
    rows: list[dict] = []
    if trajs:
        if scorer is None:
            from undercurve.scoring.torch_engine import TorchScorer

            scorer = TorchScorer(
                s["model"], device=s["device"], dtype=s["dtype"], batch_tokens=int(s["batch_tokens"]),
                edis=EdisParams(**s["edis"]),
                **{k: int(s[k]) for k in ("chunk_positions", "probe_chunk") if s.get(k)},
            )
        rows = scorer.score(trajs, mode=s["mode"])
    return pl.DataFrame(rows, schema=SCORE_SCHEMA), aside
