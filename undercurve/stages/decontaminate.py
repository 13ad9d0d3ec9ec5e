"""Decontamination: samples that overlap a benchmark set aside, with an audit of each match.

Streams: the corpus goes through the filter ``BATCH_ROWS`` rows at a time (the benchmark
n-gram tables and embeddings are small and stay loaded), and kept rows, set-aside rows and
the audit are written as they come, so memory does not grow with the corpus."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from undercurve.io import ParquetSink, iter_parquet
from undercurve.run import RunContext
from undercurve.schema import SET_ASIDE_SCHEMA
from undercurve.stages.result import StageResult, _empty_aside, _finish_streamed, _parquet_rows, _record, _sink_atomic

BATCH_ROWS = 8192  # corpus rows in memory at a time (2,048: ~25 % slower n-gram matching, per-batch costs)


def decontaminate_stage(ctx: RunContext, prev: StageResult, demo_benchmark: str | None,
                        progress=None) -> StageResult:
    d = ctx.settings.decontam
    out = ctx.stage_dir("decontaminate")
    if not d.enabled:  # a streamed copy
        path = _sink_atomic(pl.scan_parquet(prev.path), out / "samples.parquet")
        rows = _parquet_rows(path)
        return _record(ctx, "decontaminate", "samples", path, rows, rows, _empty_aside(), [prev.artifact_id],
                       {"enabled": False})
    from undercurve.decontam import REMOVED_SCHEMA, Decontaminator

    settings = {k: v for k, v in d.model_dump(exclude={"enabled"}).items() if v is not None}
    if demo_benchmark and "gsm8k" not in settings["local_paths"]:
        settings["local_paths"] = {**settings["local_paths"], "gsm8k": demo_benchmark}
    settings["cache_dir"] = settings.get("cache_dir") or str(ctx.settings.cache_dir / "decontam")
    settings["result_cache"] = str(ctx.settings.cache_dir)  # each prompt's nearest item, by content
    schema = pl.read_parquet_schema(prev.path)  # from the footer
    rows_in, total = 0, _parquet_rows(Path(prev.path))
    with (Decontaminator(settings) as filt,
          ParquetSink(out / "samples.parquet", schema) as kept,
          ParquetSink(out / "set_aside.parquet", SET_ASIDE_SCHEMA) as aside,
          ParquetSink(out / "removed_audit.parquet", REMOVED_SCHEMA) as audit):
        for batch in iter_parquet(prev.path, BATCH_ROWS):
            within, removed = filt.filter(batch)
            kept.write(within)
            aside.write(removed)  # its set-aside columns
            audit.write(removed)
            rows_in += batch.height
            if progress:
                progress(rows_in, total)
        audit_path = audit.commit()
        report = filt.report()
        res = _finish_streamed(ctx, "decontaminate", kept, aside, rows_in, [prev.artifact_id], extra={"report": report})
    counts = pl.DataFrame(report["counts"], schema={"benchmark": pl.Utf8, "method": pl.Utf8, "count": pl.Int64})
    with ctx.registry.batch() as reg:
        reg.add_artifact(ctx.run_id, "decontaminate", "contamination_audit", audit_path, audit.rows,
                         parents=[prev.artifact_id], meta={"columns": list(REMOVED_SCHEMA)})
        reg.add_rows("contamination", ctx.run_id, counts.rename({"count": "n"}))
    return res
