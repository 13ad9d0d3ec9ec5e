"""Score: EAS / EDIS / PPL per sample. The torch engine in shards (plan, score each shard
anywhere, merge); the vLLM engine as one worker job."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path

import polars as pl

from undercurve.cache import KEY, ResultCache, content_keys, model_identity
from undercurve.io import ParquetSink, Shard, write_text_atomic
from undercurve.run import RunContext
from undercurve.schema import SET_ASIDE_SCHEMA
from undercurve.stages.result import (
    StageResult,
    _cost,
    _finish_streamed,
    _parquet_rows,
    _shard_seconds,
    plan_pending,
    record_shard_run,
)

log = logging.getLogger("undercurve")


def _score_settings(ctx: RunContext, model: str) -> dict:
    sc = ctx.settings.scoring
    keep = ("engine", "mode", "answer_prefix_tokens", "top_k", "batch_tokens", "device", "dtype", "shard_size")
    return {**{k: getattr(sc, k) for k in keep}, "edis": sc.edis.model_dump(), "model": model,
            "box_openers": ctx.settings.answers.box_openers,
            "trust_remote_code": ctx.settings.model.trust_remote_code}


# What a sample's score depends on (``scoring.trajectory.build_trajectory`` reads these), and
# the version of the scoring code: bump it when a change alters any stored number.
SCORE_FIELDS = ("prompt", "response", "answer")
SCORE_VERSION = 3  # 2: response_tokens (was length); 3: float16 entropies, probe curve only
MERGE_ROWS = 65_536  # rows of keys.parquet looked up in the cache at a time


def score_cache(ctx: RunContext, model: str) -> ResultCache:
    """Where this run's scores are kept: by content, for the model's files and every setting
    that changes a score (``Settings.cache_dir``)."""
    root = ctx.settings.cache_dir
    settings = {k: v for k, v in _score_settings(ctx, model).items() if k not in ("model", "shard_size")}
    return ResultCache.open(root, "score", {**settings, "version": SCORE_VERSION,
                                            "model_identity": model_identity(model, root / "model-hashes.json")})


def score_plan(ctx: RunContext, prev: StageResult, model: str) -> list[Shard]:
    """Shards of the samples the cache has no score for; each can run on any worker, in any order.

    Every row is keyed by its content (``keys.parquet``: id, source, key). Rows whose key a
    verified cache part holds are reused, whatever their position, id or run; the rest, one
    row per distinct key, are cut into shards of ``scoring.shard_size``. Streams: the corpus
    is never in memory."""
    d = ctx.stage_dir("score")
    cache = score_cache(ctx, model)
    keys = content_keys(prev.path, SCORE_FIELDS, d / "keys.parquet")
    shards = plan_pending(cache, keys, Path(prev.path), ["id", "source", *SCORE_FIELDS], d,
                          ctx.settings.scoring.shard_size)
    n_todo = sum(_parquet_rows(Path(s.input_path)) for s in shards)
    n_rows = _parquet_rows(keys)
    log.info("score: %d samples, %d reused (in the cache %s, or the same content as another row), "
             "%d to score in %d shards",
             n_rows, n_rows - n_todo, cache.root, n_todo, len(shards))
    return shards


@functools.lru_cache(maxsize=1)
def _torch_scorer(settings_json: str):
    """One loaded model per process (a worker scores many shards with it)."""
    from undercurve.eas import EdisParams
    from undercurve.scoring.torch_engine import TorchScorer

    s = json.loads(settings_json)
    return TorchScorer(s["model"], device=s["device"], dtype=s["dtype"], batch_tokens=s["batch_tokens"],
                       edis=EdisParams(**s["edis"]))


def score_shard(ctx: RunContext, shard: Shard, model: str) -> bool:
    """Score one shard into its cache part (skipped if the part is already there, verified);
    returns True when skipped. A part is summaries and set-aside rows (``part-X.parquet``)
    plus per-token entropies (``part-X.entropies.parquet``, float16), vouched for by one marker."""
    t0 = time.perf_counter()
    cache = ResultCache(Path(shard.output_path).parent)
    skipped, note = cache.done(shard.output_path), None
    if not skipped:
        if shard.tampered():  # computed before, yet a file fails its recorded hash
            log.warning("score: shard %d cache part fails verification: recomputing", shard.index)
            note = "output failed verification: recomputed"
        _score_shard_files(cache, shard, _score_settings(ctx, model))
    seconds = time.perf_counter() - t0
    log.info("score: shard %d %s", shard.index, "already done, skipped" if skipped else f"scored in {seconds:.1f}s")
    record_shard_run(ctx, "score", shard, skipped, seconds, note)
    return skipped


def _score_shard_files(cache: ResultCache, shard: Shard, settings: dict) -> None:
    """Score one shard's input and store it as one cache part (keyed rows, the marker last)."""
    from undercurve.scoring.score import score_frame

    scorer_key = json.dumps({k: settings[k] for k in ("model", "device", "dtype", "batch_tokens", "edis")},
                            sort_keys=True)
    df = pl.read_parquet(shard.input_path)
    scores, aside_rows = score_frame(df, settings, scorer=_torch_scorer(scorer_key))
    _store(cache, df.select("id", KEY), scores, aside_rows)


def _store(cache: ResultCache, key_of: pl.DataFrame, scores: pl.DataFrame, aside_rows: list[dict]) -> None:
    """One shard's scores (either engine's) as one cache part: summaries and set-aside rows,
    and the float16 per-token entropies beside them, keyed by content instead of the run's id."""
    from undercurve.scoring.score import split_scores

    summary, tokens = split_scores(scores)

    def keyed(df_: pl.DataFrame) -> pl.DataFrame:
        return df_.join(key_of, on="id", how="left").select(KEY, pl.exclude(KEY, "id", "source"))

    cache.write(key_of[KEY].to_list(), keyed(_with_aside(summary, aside_rows)), {"entropies": keyed(tokens)})


def score_merge(ctx: RunContext, prev: StageResult, shards: list[Shard], model: str,
                seconds: float | None = None) -> StageResult:
    """This run's ``scores.parquet``: its rows (``keys.parquet``) joined with the cache parts on
    their key, ``MERGE_ROWS`` rows at a time (the parts are filtered by a block's keys first:
    memory stays flat as the run or the cache grows). Per-token entropies stay in the cache,
    stored once; ``entropies.json`` names the parts this run reads and ``keys.parquet`` maps
    its ids to their keys (``scoring.score.scan_entropies`` reads both)."""
    from undercurve.scoring.score import SUMMARY_SCHEMA

    cache = score_cache(ctx, model)
    missing = [s.index for s in shards if not cache.done(s.output_path)]
    if missing:
        raise RuntimeError(f"score: shards {missing} are not finished")
    d = ctx.stage_dir("score")
    used = [Path(p) for p in cache.holding(d / "keys.parquet", cache.parts())]
    flagged = pl.col(ASIDE_FLAG).is_not_null()
    sc, tokens = ctx.settings.scoring, 0
    with ParquetSink(d / "scores.parquet", SUMMARY_SCHEMA) as kept, \
            ParquetSink(d / "set_aside.parquet", SET_ASIDE_SCHEMA) as aside:
        for rows in cache.merged(d / "keys.parquet", used, MERGE_ROWS):
            aside.write(rows.filter(flagged).select(
                "id", "source", pl.lit("score").alias("stage"), pl.col(ASIDE_FLAG).alias("reason"), "detail"))
            scored = rows.filter(~flagged)
            kept.write(scored)
            tokens += scored["response_tokens"].sum()
        cache.touch(used)
        side = [os.path.relpath(cache.side_path(p, "entropies").resolve(), d.resolve()) for p in sorted(used)]
        manifest = write_text_atomic(json.dumps({"parts": side, "cache": str(cache.root)}, indent=1),
                                     d / "entropies.json")
        n_rows, n_computed = prev.rows_out, sum(_parquet_rows(Path(s.input_path)) for s in shards)
        extra = {"engine": sc.engine, "mode": sc.mode, **({"top_k": sc.top_k} if sc.engine == "vllm" else {}),
                 "shards": len(shards), "rows_computed": n_computed, "rows_reused": n_rows - n_computed,
                 "cache": str(cache.root),
                 **_cost(_shard_seconds(ctx, "score") if seconds is None else seconds, tokens)}
        with ctx.registry.batch() as reg:
            res = _finish_streamed(ctx, "score", kept, aside, n_rows, [prev.artifact_id], "scores", extra)
            reg.add_artifact(ctx.run_id, "score", "entropies", manifest, res.rows_out, parents=[res.artifact_id],
                             meta={"parts": side, "dtype": "float16"})
    return res


def score_stage(ctx: RunContext, prev: StageResult, model: str, progress=None) -> StageResult:
    """EAS/EDIS/PPL per sample; content already in the cache is not scored again. The torch
    engine in-process (the flow fans its shards out itself); the vLLM engine as one worker job
    with one step per shard. Both store their shards as cache parts and merge the same way."""
    from undercurve.scoring import scores_in_shards

    shards = score_plan(ctx, prev, model)
    if scores_in_shards(ctx.settings.scoring):
        for shard in shards:
            score_shard(ctx, shard, model)
        return score_merge(ctx, prev, shards, model)
    from undercurve.vllm_stages import score_with_vllm  # the paper's top-K path

    todo = [s for s in shards if not ResultCache(Path(s.output_path).parent).done(s.output_path)]
    steps, seconds = score_with_vllm([Path(s.input_path) for s in todo], _score_settings(ctx, model),
                                     ctx.stage_dir("score") / "vllm", progress)
    for shard, step in zip(todo, steps):
        key_of = pl.read_parquet(shard.input_path, columns=["id", KEY])
        aside = pl.read_parquet(step["set_aside_output"]).to_dicts()
        _store(ResultCache(Path(shard.output_path).parent), key_of, pl.read_parquet(step["output"]), aside)
    return score_merge(ctx, prev, shards, model, seconds)


# ---------------------------------------------------------------------------- helpers
ASIDE_FLAG = "_set_aside_reason"


def _with_aside(scores: pl.DataFrame, aside_rows: list[dict]) -> pl.DataFrame:
    """Shard files carry scored rows and set-aside rows together, so a shard is one file."""
    aside = pl.DataFrame(
        {"id": [r.get("id") for r in aside_rows], ASIDE_FLAG: [r["reason"] for r in aside_rows],
         "source": [r.get("source") for r in aside_rows], "detail": [str(r.get("detail") or "") for r in aside_rows]},
        schema={"id": pl.Utf8, ASIDE_FLAG: pl.Utf8, "source": pl.Utf8, "detail": pl.Utf8})
    return pl.concat([scores, aside], how="diagonal_relaxed")
