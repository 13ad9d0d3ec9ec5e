"""Frame-level scoring: samples in, one score row per sample out, unscorable rows set aside."""

from __future__ import annotations

import polars as pl

from undercurve.answers import DEFAULT_BOX_OPENERS
from undercurve.eas import EdisParams
from undercurve.scoring.trajectory import Trajectory, build_trajectory

# Per-sample scalars: what features and selection read. Computed in float64 from the
# engine's entropies BEFORE the per-token lists are narrowed (float32 in memory, float16 on
# disk), so no summary carries their rounding.
SUMMARY_SCHEMA = {
    "id": pl.Utf8,
    "engine": pl.Utf8,
    "mode": pl.Utf8,
    "T": pl.Int64,
    "response_tokens": pl.Int64,  # tokens in the response (x_T is index T of them)
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
}
# Per-token entropies as the engines return them: float32 lists; in probe mode the
# suffix positions of each step ([T-1][K]). What ``score_frame`` and the vLLM worker's shard
# files hold, with the derived curve ``entropy`` EAS integrates.
SCORE_SCHEMA = {**SUMMARY_SCHEMA, "entropy": pl.List(pl.Float32), "plain_entropy": pl.List(pl.Float32),
                "suffix_entropy": pl.List(pl.List(pl.Float32))}
# Per-token entropies (bits) as stored, once, apart from the summaries: float16, zstd
# (~1.8 B/token per list). Only the lists a reader uses are kept: the plain trajectory and, in
# probe mode, the curve EAS integrates (the last suffix position), not the other positions.
# Rounding: |stored - H| <= 2**-11 |H| (+ 2**-25 below 2**-14, float16's subnormals), <= 0.0085
# bits for any H <= log2(151,665) = 17.2 bits; summaries never see it (computed in float64
# before the lists are narrowed), only figures and readers of the curves do.
TOKEN_SCHEMA = {
    "id": pl.Utf8,
    "plain_entropy": pl.List(pl.Float16),  # H_1..H_T, next-token entropy of the response itself
    "probe_entropy": pl.List(pl.Float16),  # probe mode: H_1..H_{T-1} at the answer suffix; plain: null
}


def split_scores(scores: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(summary table, per-token table as stored) of a ``score_frame`` result."""
    last = pl.col("suffix_entropy").list.eval(pl.element().list.last())
    return (scores.select([pl.col(c).cast(t) for c, t in SUMMARY_SCHEMA.items()]),
            scores.select(pl.col("id").cast(pl.Utf8), pl.col("plain_entropy").cast(TOKEN_SCHEMA["plain_entropy"]),
                          last.cast(TOKEN_SCHEMA["probe_entropy"]).alias("probe_entropy")))


def entropy_curve() -> pl.Expr:
    """The curve H_1..H_{T-1} EAS integrates (float32), from the stored per-token lists."""
    plain, probe = pl.col("plain_entropy"), pl.col("probe_entropy")
    return (pl.when(probe.is_null()).then(plain.list.slice(0, plain.list.len() - 1)).otherwise(probe)
            .cast(pl.List(pl.Float32)).alias("entropy"))


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


def scan_entropies(score_dir, ids=None) -> pl.LazyFrame:
    """A curate run's per-token table, lazily: ``id, plain_entropy, probe_entropy, entropy``
    (only ``ids`` when given: then only the cache parts holding them are read).

    ``score_dir`` is ``<run_dir>/score``. The entropies (of either engine) live in the result
    cache, stored once for every run that scored the same content; ``entropies.json`` names the
    parts this run reads and ``keys.parquet`` maps its ids to their content keys."""
    import json
    from pathlib import Path

    score_dir = Path(score_dir)
    manifest = score_dir / "entropies.json"
    if manifest.exists():
        parts = [score_dir / p for p in json.loads(manifest.read_text())["parts"]]
        keys = pl.scan_parquet(score_dir / "keys.parquet").select("id", "key")
        if ids is not None:
            keys = keys.filter(pl.col("id").is_in(list(ids)))
            wanted = keys.select("key").collect()["key"].implode()
            tokens = pl.scan_parquet(parts).filter(pl.col("key").is_in(wanted)) if parts else None
        else:
            tokens = pl.scan_parquet(parts) if parts else None
        if tokens is None:
            return pl.LazyFrame(schema=TOKEN_SCHEMA).with_columns(entropy_curve())
        lf = keys.join(tokens.unique("key", keep="first"), on="key", how="inner", maintain_order="left")
    else:
        lf = pl.LazyFrame(schema=TOKEN_SCHEMA)
    return lf.select(list(TOKEN_SCHEMA)).with_columns(entropy_curve())
