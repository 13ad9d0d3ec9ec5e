"""Decontamination: samples that overlap a benchmark set aside, with an audit of each match."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from undercurve.io import write_parquet_atomic
from undercurve.run import RunContext
from undercurve.schema import SET_ASIDE_SCHEMA
from undercurve.stages.result import StageResult, _empty_aside, _finish


def decontaminate_stage(ctx: RunContext, prev: StageResult, demo_benchmark: str | None) -> StageResult:
    df = pl.read_parquet(prev.path)
    d = ctx.settings.decontam
    if not d.enabled:
        return _finish(ctx, "decontaminate", df, _empty_aside(), df.height, prev, extra={"enabled": False})
    from undercurve.decontam import decontaminate

    settings = {k: v for k, v in d.model_dump(exclude={"enabled"}).items() if v is not None}
    if demo_benchmark and "gsm8k" not in settings["local_paths"]:
        settings["local_paths"] = {**settings["local_paths"], "gsm8k": demo_benchmark}
    settings["cache_dir"] = settings.get("cache_dir") or str(ctx.settings.cache_dir / "decontam")
    kept, removed, report = decontaminate(df, settings)
    audit = write_parquet_atomic(removed, ctx.stage_dir("decontaminate") / "removed_audit.parquet")
    res = _finish(ctx, "decontaminate", kept, removed.select(list(SET_ASIDE_SCHEMA)), df.height, prev,
                  extra={"report": report})
    reg = ctx.registry
    reg.add_artifact(ctx.run_id, "decontaminate", "contamination_audit", audit, removed.height,
                     parents=[prev.artifact_id], meta={"columns": removed.columns})
    counts = pl.DataFrame(report["counts"], schema={"benchmark": pl.Utf8, "method": pl.Utf8, "count": pl.Int64})
    reg.add_rows("contamination", ctx.run_id, counts.rename({"count": "n"}))
    return res
