"""Ingest: the corpus streamed into ``samples.parquet``, unusable rows set aside."""

from __future__ import annotations

import polars as pl

from undercurve.run import RunContext
from undercurve.stages.result import StageResult, _empty_aside, _record


def ingest_stage(ctx: RunContext, corpus: str, progress=None) -> StageResult:
    """Stream the corpus into samples.parquet + set_aside.parquet (never all rows in memory),
    then record them as ``_finish`` does. A corpus with no usable row fails the run."""
    from undercurve.ingest import NoUsableRows, ingest_to

    s = ctx.settings.corpus
    d = ctx.stage_dir("ingest")
    path, aside_path = d / "samples.parquet", d / "set_aside.parquet"
    counts = ingest_to(corpus, path, aside_path, split=s.split, limit=s.limit,
                       box_openers=ctx.settings.answers.box_openers, progress=progress)
    if counts.kept == 0 and counts.balanced:
        raise NoUsableRows(corpus, counts, aside_path if counts.set_aside else None)
    if counts.set_aside:
        aside = pl.read_parquet(aside_path)  # set-aside rows are few; the samples are never loaded
    else:
        aside = _empty_aside()
        aside_path.unlink(missing_ok=True)  # as _finish: no set-aside file when nothing was set aside
    return _record(ctx, "ingest", "samples", path, counts.rows_in, counts.kept, aside, [],
                   {"source": corpus, "set_aside_reasons": counts.reasons})
