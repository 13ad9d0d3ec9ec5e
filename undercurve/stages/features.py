"""Features: one row per sample kept by every stage, with every strategy's signal."""

from __future__ import annotations

import polars as pl

from undercurve.config import Settings
from undercurve.run import RunContext
from undercurve.stages.result import StageResult, _empty_aside, _parquet_rows, _record, _sink_atomic


def model_stages(settings: Settings) -> set[str]:
    """The model stages (``score``, ``pass_rate``) the configured strategies need."""
    return set().union(*(s.stages() for s in settings.selection.make()))


def features_stage(ctx: RunContext, samples: StageResult, scores: StageResult | None,
                   pass_rates: StageResult | None) -> StageResult:
    """One row per sample kept by EVERY stage, with every strategy's signal.

    A row set aside at scoring is not in the scores table, so the inner join keeps it out of
    every selection (the random and length strategies included)."""
    from undercurve.strategies import PASS_RATE_COLUMNS, SCORE_COLUMNS

    # lazily, summary columns only: never the samples' text or the per-token entropy lists
    df = pl.scan_parquet(samples.path).select("id", "chat_tokens")
    parents = [samples.artifact_id]
    for res, cols in ((scores, SCORE_COLUMNS), (pass_rates, PASS_RATE_COLUMNS)):
        if res is not None:
            df = df.join(pl.scan_parquet(res.path).select("id", *cols), on="id", how="inner", maintain_order="left")
            parents.append(res.artifact_id)
    path = _sink_atomic(df, ctx.stage_dir("features") / "features.parquet")
    n = _parquet_rows(path)
    return _record(ctx, "features", "features", path, n, n, _empty_aside(), parents, None)
