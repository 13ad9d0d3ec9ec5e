"""Pass rate: n rollouts per sample, judged against the reference answer.

Rollouts are kept in the workdir's content-keyed cache (``undercurve.cache``): a sample whose
prompt and answer were rolled out before, by the same model files with the same settings, is
not rolled out again, whatever its position, id or run name."""

from __future__ import annotations

import polars as pl

from undercurve.cache import KEY, ResultCache, content_keys, model_identity
from undercurve.run import RunContext
from undercurve.stages.result import StageResult, _cost, _empty_aside, _parquet_rows, _record, _sink_atomic

# What a sample's rollouts depend on, and the version of the rollout/judging code: bump it
# when a change alters any stored rollout or verdict.
ROLLOUT_FIELDS = ("prompt", "answer")
PASS_RATE_VERSION = 2  # 2: rollouts count response_tokens (was n_tokens)
RATE_COLUMNS = ("n", "n_correct", "pass_rate")


def pass_rate_cache(ctx: RunContext, model: str, backend: str) -> ResultCache:
    pr = ctx.settings.pass_rate
    root = ctx.settings.cache_dir
    settings = {**pr.model_dump(exclude={"enabled", "engine", "shard_size"}), "backend": backend,
                "box_openers": ctx.settings.answers.box_openers, "version": PASS_RATE_VERSION,
                "model_identity": model_identity(model, root / "model-hashes.json")}
    return ResultCache.open(root, "pass_rate", settings)


def pass_rate_stage(ctx: RunContext, prev: StageResult, model: str, progress=None) -> StageResult:
    """n rollouts per sample (vLLM, or transformers on a CPU); pass rate by math equivalence
    with the reference. Only samples the cache has no rollouts for are rolled out."""
    from undercurve.vllm_stages import pass_rate_rollouts, sampling_backend

    pr = ctx.settings.pass_rate
    d = ctx.stage_dir("pass_rate")
    cache = pass_rate_cache(ctx, model, sampling_backend(pr.engine))
    keys = content_keys(prev.path, ROLLOUT_FIELDS, d / "keys.parquet")
    todo = cache.missing(keys)
    # prompts and answers of the new samples only (the responses are never read here)
    pending = (pl.scan_parquet(prev.path).select("id", "prompt", "answer")
               .join(todo, on="id", how="inner", maintain_order="left").collect())
    steps, seconds = pass_rate_rollouts(
        pending.drop(KEY), model, {**pr.model_dump(), "box_openers": ctx.settings.answers.box_openers}, d / "work",
        ctx.settings.model.trust_remote_code, progress)
    key_of = pending.select("id", KEY)
    for step in steps:  # each shard rolled out becomes one cache part
        def keyed(path: str) -> pl.DataFrame:
            return pl.read_parquet(path).join(key_of, on="id", how="left").select(KEY, pl.exclude(KEY, "id"))

        shard_keys = pl.read_parquet(step["input"], columns=["id"]).join(key_of, on="id", how="left")[KEY].to_list()
        cache.write(shard_keys, keyed(step["pass_rate_output"]), {"rollouts": keyed(step["output"])})

    parts = cache.parts()
    run_keys = pl.scan_parquet(keys).select("id", KEY)
    used = cache.holding(keys, parts)
    rates = run_keys.join(cache.rows(used), on=KEY, how="left", maintain_order="left")
    missing = rates.filter(pl.col("pass_rate").is_null()).select(pl.len()).collect().item()
    if missing:
        raise RuntimeError(f"pass_rate: {missing} samples have no rollouts in {cache.root}")
    cache.touch(used)
    path = _sink_atomic(rates.select("id", *RATE_COLUMNS), d / "pass_rates.parquet")
    rollouts = _sink_atomic(run_keys.join(cache.rows(used, "rollouts"), on=KEY, how="inner", maintain_order="left")
                            .drop(KEY), d / "rollouts.parquet")
    generated = pl.scan_parquet(rollouts).select(pl.col("response_tokens").sum()).collect().item() or 0
    n_rows = _parquet_rows(keys)
    extra = {"rollouts": str(rollouts), "n": pr.rollouts, "rows_computed": pending.height,
             "rows_reused": n_rows - pending.height, "cache": str(cache.root), **_cost(seconds, generated)}
    return _record(ctx, "pass_rate", "pass_rates", path, prev.rows_out, _parquet_rows(path), _empty_aside(),
                   [prev.artifact_id], extra)
