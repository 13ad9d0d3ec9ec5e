"""Score: EAS / EDIS / PPL per sample. The torch engine in shards (plan, score each shard
anywhere, merge); the vLLM engine as one worker job."""

from __future__ import annotations

import functools
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from undercurve.io import Shard, outputs_verified, plan_shards, write_marker, write_parquet_atomic
from undercurve.run import RunContext
from undercurve.stages.result import (
    StageResult,
    _cost,
    _finish,
    _parquet_rows,
    _record,
    _shard_seconds,
    _sink_atomic,
)

log = logging.getLogger("undercurve")


def _score_settings(ctx: RunContext, model: str) -> dict:
    sc = ctx.settings.scoring
    keep = ("engine", "mode", "answer_prefix_tokens", "top_k", "batch_tokens", "device", "dtype", "shard_size")
    return {**{k: getattr(sc, k) for k in keep}, "edis": sc.edis.model_dump(), "model": model,
            "box_openers": ctx.settings.answers.box_openers,
            "trust_remote_code": ctx.settings.model.trust_remote_code}


def score_plan(ctx: RunContext, prev: StageResult, model: str) -> list[Shard]:
    """Shards of the exact torch scorer; each can run on any worker, in any order."""
    settings = _score_settings(ctx, model)
    df = pl.read_parquet(prev.path)
    shards = plan_shards(df, ctx.stage_dir("score") / "shards", settings["shard_size"], settings=settings)
    done = sum(s.done() for s in shards)
    log.info("score: %d samples in %d shards, %d already done", df.height, len(shards), done)
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
    """Score one shard (skipped if already done); returns True when skipped.

    Two outputs: ``shard-NNNNN.parquet`` (per-sample summaries and set-aside rows) and
    ``entropies-NNNNN.parquet`` (per-token entropies, float32). The marker vouches for both."""
    t0 = time.perf_counter()
    skipped, note = _shard_done(shard), None
    if not skipped:
        # this input and settings were scored before, yet an output fails its recorded hash
        # (truncated, edited, deleted) or predates the entropies part
        if shard.tampered() or outputs_verified(shard.marker, shard.fingerprint, [shard.output_path]):
            log.warning("score: shard %d outputs fail verification: recomputing", shard.index)
            note = "output failed verification: recomputed"
        _score_shard_files(shard, _score_settings(ctx, model))
    seconds = time.perf_counter() - t0
    log.info("score: shard %d %s", shard.index, "already done, skipped" if skipped else f"scored in {seconds:.1f}s")
    ctx.registry.add_rows("shard_runs", ctx.run_id, pl.DataFrame([{
        "stage": "score", "shard": shard.index, "worker": worker_identity(), "skipped": skipped,
        "seconds": seconds, "finished_at": datetime.now(timezone.utc), "note": note}]))
    return skipped


def _entropy_part(shard: Shard) -> Path:
    return Path(shard.output_path).with_name(f"entropies-{shard.index:05d}.parquet")


def _shard_done(shard: Shard) -> bool:
    """Both outputs exist with the hashes the marker recorded (``Shard.done`` checks one)."""
    return outputs_verified(shard.marker, shard.fingerprint, [shard.output_path, _entropy_part(shard)])


def _score_shard_files(shard: Shard, settings: dict) -> None:
    """Score one shard's input and write its two outputs, the marker last."""
    from undercurve.scoring.score import score_frame, split_scores

    scorer_key = json.dumps({k: settings[k] for k in ("model", "device", "dtype", "batch_tokens", "edis")},
                            sort_keys=True)
    scores, aside_rows = score_frame(pl.read_parquet(shard.input_path), settings, scorer=_torch_scorer(scorer_key))
    summary, tokens = split_scores(scores)
    del scores
    write_parquet_atomic(tokens, _entropy_part(shard))
    write_parquet_atomic(_with_aside(summary, aside_rows), shard.output_path)
    write_marker(shard.marker, shard.fingerprint, [shard.output_path, _entropy_part(shard)])


def worker_identity() -> str:
    """host:pid, plus the Dask worker's address when a Dask worker runs this."""
    import os
    import socket

    who = f"{socket.gethostname()}:{os.getpid()}"
    try:
        from distributed import get_worker

        return f"{who} dask={get_worker().address}"
    except (ImportError, ValueError):  # not inside a Dask worker
        return who


def score_merge(ctx: RunContext, prev: StageResult, shards: list[Shard]) -> StageResult:
    """Stream the shards' summaries into ``scores.parquet`` (never every shard in memory).

    The per-token entropies stay where their shard wrote them, once: the
    ``shards/entropies-NNNNN.parquet`` parts, read with ``scoring.score.scan_entropies``."""
    from undercurve.scoring.score import SUMMARY_SCHEMA

    missing = [s.index for s in shards if not _shard_done(s)]
    if missing:
        raise RuntimeError(f"score: shards {missing} are not finished")
    d = ctx.stage_dir("score")
    parts = [_entropy_part(s) for s in shards]
    _drop_stale_entropy_parts(d / "shards", parts)
    both = pl.scan_parquet([s.output_path for s in shards]) if shards else pl.LazyFrame(schema=SUMMARY_SCHEMA)
    if ASIDE_FLAG not in both.collect_schema().names():
        both = both.with_columns(*[pl.lit(None, pl.Utf8).alias(c) for c in (ASIDE_FLAG, "source", "detail")])
    flagged = pl.col(ASIDE_FLAG).is_not_null()
    aside = both.filter(flagged).select(
        "id", "source", pl.lit("score").alias("stage"), pl.col(ASIDE_FLAG).alias("reason"), "detail").collect()
    path = _sink_atomic(both.filter(~flagged).select(list(SUMMARY_SCHEMA)), d / "scores.parquet")
    if aside.height:
        write_parquet_atomic(aside, d / "set_aside.parquet")
    extra = {"engine": "torch", "mode": ctx.settings.scoring.mode, "shards": len(shards),
             **_cost(_shard_seconds(ctx, "score"), pl.scan_parquet(path).select(pl.col("length").sum()).collect().item())}
    res = _record(ctx, "score", "scores", path, prev.rows_out, _parquet_rows(path), aside, [prev.artifact_id], extra)
    ctx.registry.add_artifact(ctx.run_id, "score", "entropies", d / "shards", res.rows_out, parents=[res.artifact_id],
                              meta={"parts": [str(p) for p in parts], "dtype": "float32"})
    return res


def score_stage(ctx: RunContext, prev: StageResult, model: str, progress=None) -> StageResult:
    """EAS/EDIS/PPL per sample; finished shards are not recomputed. In-process for the torch
    engine (the flow fans shards out itself), one worker job for the vLLM engine."""
    from undercurve.scoring import scores_in_shards

    if scores_in_shards(ctx.settings.scoring):
        shards = score_plan(ctx, prev, model)
        for shard in shards:
            score_shard(ctx, shard, model)
        return score_merge(ctx, prev, shards)
    from undercurve.vllm_stages import score_with_vllm  # the paper's top-K path

    settings = _score_settings(ctx, model)
    df = pl.read_parquet(prev.path)
    scores, aside, seconds = score_with_vllm(df, settings, ctx.stage_dir("score") / "vllm", progress)
    n_shards = (df.height + settings["shard_size"] - 1) // settings["shard_size"]
    return _finish(ctx, "score", scores, aside, df.height, prev, kind="scores",
                   extra={"engine": "vllm", "mode": settings["mode"], "top_k": settings["top_k"], "shards": n_shards,
                          **_cost(seconds, int(scores["length"].sum()) if scores.height else 0)})


# ---------------------------------------------------------------------------- helpers
ASIDE_FLAG = "_set_aside_reason"


def _with_aside(scores: pl.DataFrame, aside_rows: list[dict]) -> pl.DataFrame:
    """Shard files carry scored rows and set-aside rows together, so a shard is one file."""
    aside = pl.DataFrame(
        {"id": [r.get("id") for r in aside_rows], ASIDE_FLAG: [r["reason"] for r in aside_rows],
         "source": [r.get("source") for r in aside_rows], "detail": [str(r.get("detail") or "") for r in aside_rows]},
        schema={"id": pl.Utf8, ASIDE_FLAG: pl.Utf8, "source": pl.Utf8, "detail": pl.Utf8})
    return pl.concat([scores, aside], how="diagonal_relaxed")


def _drop_stale_entropy_parts(shard_dir: Path, keep: list[Path]) -> None:
    """Parts of shards an earlier run of this name had and this one has not (the shard
    count shrank): left alone they would be read as this run's entropies."""
    names = {p.name for p in keep}
    for stale in shard_dir.glob("entropies-*.parquet"):
        if stale.name not in names:
            stale.unlink()
