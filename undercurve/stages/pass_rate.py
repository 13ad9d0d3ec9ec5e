"""Pass rate: n rollouts per sample, judged against the reference answer."""

from __future__ import annotations

import polars as pl

from undercurve.run import RunContext
from undercurve.stages.result import StageResult, _cost, _empty_aside, _finish


def pass_rate_stage(ctx: RunContext, prev: StageResult, model: str, progress=None) -> StageResult:
    """n rollouts per sample (vLLM, or transformers on a CPU); pass rate by math equivalence
    with the reference."""
    from undercurve.vllm_stages import pass_rate_rollouts

    pr = ctx.settings.pass_rate
    df = pl.read_parquet(prev.path)
    d = ctx.stage_dir("pass_rate")
    rates, rollouts_path, seconds = pass_rate_rollouts(
        df, model, {**pr.model_dump(), "box_openers": ctx.settings.answers.box_openers}, d,
        ctx.settings.model.trust_remote_code, progress)
    generated = pl.scan_parquet(rollouts_path).select(pl.col("n_tokens").sum()).collect().item() or 0
    return _finish(ctx, "pass_rate", rates, _empty_aside(), df.height, prev, kind="pass_rates",
                   extra={"rollouts": str(rollouts_path), "n": pr.rollouts, **_cost(seconds, generated)})
