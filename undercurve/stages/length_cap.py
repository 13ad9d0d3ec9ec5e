"""Length cap: samples longer than ``max_tokens`` (with the model's tokenizer) set aside.

Streams: ``BATCH_ROWS`` rows at a time are read, tokenised and written, so memory does not
grow with the corpus; outputs and row order are those of one pass over the whole table."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from undercurve.io import ParquetSink, iter_parquet
from undercurve.run import RunContext
from undercurve.schema import SET_ASIDE_SCHEMA
from undercurve.stages.result import StageResult, _finish_streamed, _parquet_rows

BATCH_ROWS = 2048  # rows in memory at a time (tokenised in sub-batches by token_lengths)


def length_cap_stage(ctx: RunContext, prev: StageResult, model: str, progress=None) -> StageResult:
    from transformers import AutoTokenizer

    from undercurve.textlen import cap_length

    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=ctx.settings.model.trust_remote_code)
    cap = ctx.settings.max_tokens
    d = ctx.stage_dir("length_cap")
    schema = {**pl.read_parquet_schema(prev.path), "chat_tokens": pl.Int64}  # from the footer
    rows_in, total = 0, _parquet_rows(Path(prev.path))
    with ParquetSink(d / "samples.parquet", schema) as kept, ParquetSink(d / "set_aside.parquet", SET_ASIDE_SCHEMA) as aside:
        for batch in iter_parquet(prev.path, BATCH_ROWS):
            within, over = cap_length(tok, batch, cap)
            kept.write(within)
            aside.write(over)
            rows_in += batch.height
            if progress:
                progress(rows_in, total)
        return _finish_streamed(ctx, "length_cap", kept, aside, rows_in, [prev.artifact_id], extra={"max_tokens": cap})
