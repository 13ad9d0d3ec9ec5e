"""Length cap: samples longer than ``max_tokens`` (with the model's tokenizer) set aside."""

from __future__ import annotations

import polars as pl

from undercurve.run import RunContext
from undercurve.stages.result import StageResult, _finish


def length_cap_stage(ctx: RunContext, prev: StageResult, model: str) -> StageResult:
    from transformers import AutoTokenizer

    from undercurve.textlen import cap_length

    df = pl.read_parquet(prev.path)
    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=ctx.settings.model.trust_remote_code)
    kept, aside = cap_length(tok, df, ctx.settings.max_tokens)
    return _finish(ctx, "length_cap", kept, aside, df.height, prev, extra={"max_tokens": ctx.settings.max_tokens})
