"""Pass rate: n rollouts per sample, judged against the reference answer.

Rollouts are kept in the workdir's content-keyed cache (``undercurve.cache``): a sample whose
prompt and answer were rolled out before, by the same model files with the same settings, is
not rolled out again, whatever its position, id or run name.

Like scoring, the stage is plan -> shards -> merge. In one process the shards are the steps
of ONE worker job (the engine loads once); on a cluster each shard is its own worker job on
whichever worker (one GPU each with dask-cuda) takes it: data-parallel rollouts."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import polars as pl

from undercurve.cache import KEY, ResultCache, content_keys, model_identity
from undercurve.io import ParquetSink, Shard
from undercurve.run import RunContext
from undercurve.stages.result import (
    StageResult,
    _cost,
    _empty_aside,
    _parquet_rows,
    _record,
    _shard_seconds,
    plan_pending,
    record_shard_run,
)

log = logging.getLogger("undercurve")

# What a sample's rollouts depend on, and the version of the rollout/judging code: bump it
# when a change alters any stored rollout or verdict.
ROLLOUT_FIELDS = ("prompt", "answer")
PASS_RATE_VERSION = 2  # 2: rollouts count response_tokens (was n_tokens)
RATE_COLUMNS = ("n", "n_correct", "pass_rate")
MERGE_ROWS = 16_384  # rows of keys.parquet looked up at a time (each with n rollouts)


def _backend(ctx: RunContext) -> str:
    from undercurve.vllm_stages import sampling_backend

    return sampling_backend(ctx.settings.pass_rate.engine)


def pass_rate_cache(ctx: RunContext, model: str, backend: str) -> ResultCache:
    pr = ctx.settings.pass_rate
    root = ctx.settings.cache_dir
    settings = {**pr.model_dump(exclude={"enabled", "engine", "shard_size"}), "backend": backend,
                "box_openers": ctx.settings.answers.box_openers, "version": PASS_RATE_VERSION,
                "model_identity": model_identity(model, root / "model-hashes.json")}
    return ResultCache.open(root, "pass_rate", settings)


def pass_rate_plan(ctx: RunContext, prev: StageResult, model: str) -> list[Shard]:
    """Shards of the samples the cache has no rollouts for (one row per distinct prompt and
    answer); each can run on any worker, in any order."""
    d = ctx.stage_dir("pass_rate")
    cache = pass_rate_cache(ctx, model, _backend(ctx))
    keys = content_keys(prev.path, ROLLOUT_FIELDS, d / "keys.parquet")
    shards = plan_pending(cache, keys, Path(prev.path), ["id", *ROLLOUT_FIELDS], d, ctx.settings.pass_rate.shard_size)
    n_rows, n_todo = _parquet_rows(keys), sum(_parquet_rows(Path(s.input_path)) for s in shards)
    log.info("pass_rate: %d samples, %d reused from the cache %s, %d to roll out in %d shards",
             n_rows, n_rows - n_todo, cache.root, n_todo, len(shards))
    return shards


def _rollouts(ctx: RunContext, shards: list[Shard], model: str, work: Path, progress=None) -> float:
    """Roll out the unfinished ``shards`` in one worker job and store each as its cache part;
    -> seconds computed."""
    from undercurve.vllm_stages import pass_rate_rollouts

    todo = [s for s in shards if not _part_cache(s).done(s.output_path)]
    settings = {**ctx.settings.pass_rate.model_dump(), "box_openers": ctx.settings.answers.box_openers}
    steps, seconds = pass_rate_rollouts([Path(s.input_path) for s in todo], model, settings, work,
                                        ctx.settings.model.trust_remote_code, progress)
    for shard, step in zip(todo, steps):
        key_of = pl.read_parquet(shard.input_path, columns=["id", KEY])

        def keyed(path: str) -> pl.DataFrame:
            return pl.read_parquet(path).join(key_of, on="id", how="left").select(KEY, pl.exclude(KEY, "id"))

        _part_cache(shard).write(key_of[KEY].to_list(), keyed(step["pass_rate_output"]),
                                 {"rollouts": keyed(step["output"])})
    return seconds


def _part_cache(shard: Shard) -> ResultCache:
    """The cache a planned shard writes into (its part's folder): no need to hash the model
    files and pick the backend again on a worker."""
    return ResultCache(Path(shard.output_path).parent)


def rollout_shard(ctx: RunContext, shard: Shard, model: str) -> bool:
    """Roll out one shard into its cache part, as its own worker job (skipped if the part is
    already there, verified); returns True when skipped."""
    t0 = time.perf_counter()
    skipped = _part_cache(shard).done(shard.output_path)
    if not skipped:
        _rollouts(ctx, [shard], model, ctx.stage_dir("pass_rate") / "work" / f"shard-{shard.index:05d}")
    seconds = time.perf_counter() - t0
    log.info("pass_rate: shard %d %s", shard.index, "already done, skipped" if skipped else f"rolled out in {seconds:.1f}s")
    record_shard_run(ctx, "pass_rate", shard, skipped, seconds)
    return skipped


def pass_rate_merge(ctx: RunContext, prev: StageResult, shards: list[Shard], model: str,
                    seconds: float | None = None) -> StageResult:
    """This run's ``pass_rates.parquet`` and ``rollouts.parquet``: its rows joined with the
    cache parts on their key, ``MERGE_ROWS`` rows at a time (rollouts hold whole responses: a
    block's are looked up, never every part's)."""
    from undercurve.vllm_worker import PASS_RATE_SCHEMA, ROLLOUT_SCHEMA

    pr = ctx.settings.pass_rate
    d = ctx.stage_dir("pass_rate")
    cache = pass_rate_cache(ctx, model, _backend(ctx))
    missing = [s.index for s in shards if not cache.done(s.output_path)]
    if missing:
        raise RuntimeError(f"pass_rate: shards {missing} are not finished")
    keys = d / "keys.parquet"
    used = [Path(p) for p in cache.holding(keys, cache.parts())]
    generated = 0
    with ParquetSink(d / "pass_rates.parquet", PASS_RATE_SCHEMA) as rate_sink, \
            ParquetSink(d / "rollouts.parquet", ROLLOUT_SCHEMA) as rollout_sink:
        for rates in cache.merged(keys, used, MERGE_ROWS):
            rate_sink.write(rates)
            rollouts = rates.select("id", KEY).join(cache.lookup(used, rates, "rollouts"), on=KEY, how="inner",
                                                     maintain_order="left")
            rollout_sink.write(rollouts)
            generated += rollouts["response_tokens"].sum()
        path, rollouts = rate_sink.commit(), rollout_sink.commit()
    cache.touch(used)
    n_rows, n_computed = _parquet_rows(keys), sum(_parquet_rows(Path(s.input_path)) for s in shards)
    extra = {"rollouts": str(rollouts), "n": pr.rollouts, "shards": len(shards), "rows_computed": n_computed,
             "rows_reused": n_rows - n_computed, "cache": str(cache.root),
             **_cost(_shard_seconds(ctx, "pass_rate") if seconds is None else seconds, generated)}
    return _record(ctx, "pass_rate", "pass_rates", path, prev.rows_out, _parquet_rows(path), _empty_aside(),
                   [prev.artifact_id], extra)


def pass_rate_stage(ctx: RunContext, prev: StageResult, model: str, progress=None) -> StageResult:
    """n rollouts per sample (vLLM, or transformers on a CPU); pass rate by math equivalence
    with the reference. Only samples the cache has no rollouts for are rolled out, all in one
    worker job."""
    shards = pass_rate_plan(ctx, prev, model)
    seconds = _rollouts(ctx, shards, model, ctx.stage_dir("pass_rate") / "work", progress)
    return pass_rate_merge(ctx, prev, shards, model, seconds)
