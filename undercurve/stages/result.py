"""What every stage shares: its ``StageResult``, the atomic writes, the row-balance check and
the registry record (``_finish``; ``_finish_streamed`` for rows written through sinks;
``_record``), a model stage's cost, the shards of a cached model stage (``plan_pending``,
``record_shard_run``), and the run summary."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from undercurve.cache import KEY, ResultCache
from undercurve.io import sink_parquet_atomic as _sink_atomic  # noqa: F401 (the stages import it from here)
from undercurve.io import ParquetSink, Shard, write_parquet_atomic
from undercurve.run import RunContext
from undercurve.schema import SET_ASIDE_SCHEMA

log = logging.getLogger("undercurve")


@dataclass
class StageResult:
    stage: str
    path: str
    artifact_id: str
    rows_in: int
    rows_out: int
    set_aside: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _finish(ctx: RunContext, stage: str, out: pl.DataFrame, aside: pl.DataFrame, rows_in: int,
            parent: StageResult | None, kind: str = "samples", extra: dict | None = None,
            parents: list[str] | None = None) -> StageResult:
    """Write output + set-aside, check the row balance, record artifacts and lineage."""
    d = ctx.stage_dir(stage)
    path = write_parquet_atomic(out, d / f"{kind}.parquet")
    if aside.height:
        write_parquet_atomic(aside.select(list(SET_ASIDE_SCHEMA)), d / "set_aside.parquet")
    ids = list(parents or ([parent.artifact_id] if parent else []))
    return _record(ctx, stage, kind, path, rows_in, out.height, aside, ids, extra)


def _finish_streamed(ctx: RunContext, stage: str, out: ParquetSink, aside: ParquetSink, rows_in: int,
                     parents: list[str], kind: str = "samples", extra: dict | None = None) -> StageResult:
    """``_finish`` for a stage that streamed its rows into sinks: publish them (no set-aside
    file when nothing was set aside, as ``_finish``), then check and record."""
    path = out.commit()
    if aside.rows:
        aside.commit()
        aside_rows = pl.read_parquet(aside.path)  # few, and the registry keeps them all anyway
    else:
        aside.abort()
        aside.path.unlink(missing_ok=True)  # an earlier run's
        aside_rows = _empty_aside()
    return _record(ctx, stage, kind, path, rows_in, out.rows, aside_rows, parents, extra)


def _record(ctx: RunContext, stage: str, kind: str, path: Path, rows_in: int, kept: int, aside: pl.DataFrame,
            parents: list[str], extra: dict | None) -> StageResult:
    """Check the row balance and record a written stage output (and its set-aside rows,
    already in ``<stage>/set_aside.parquet``) with lineage in the registry."""
    if kept + aside.height != rows_in:
        raise AssertionError(f"{stage}: rows in {rows_in} != kept {kept} + set aside {aside.height}")
    with ctx.registry.batch() as reg:
        aid = reg.add_artifact(ctx.run_id, stage, kind, path, kept, parents=parents, meta=extra)
        if aside.height:
            reg.add_artifact(ctx.run_id, stage, "set_aside", path.parent / "set_aside.parquet", aside.height,
                             parents=parents)
            reg.add_set_aside(ctx.run_id, stage, aside)
    log.info("%s: %d in, %d kept, %d set aside -> %s", stage, rows_in, kept, aside.height, path)
    return StageResult(stage, str(path), aid, rows_in, kept, aside.height, extra or {})


def _empty_aside() -> pl.DataFrame:
    return pl.DataFrame(schema=SET_ASIDE_SCHEMA)


def _parquet_rows(path: Path) -> int:
    return pl.scan_parquet(path).select(pl.len()).collect().item()  # from the footer


def _cost(seconds: float, tokens: int) -> dict:
    """What a model stage cost, for the comparison's cost per strategy: seconds of compute in
    this run (0 for work reused from an earlier run) and the tokens the model processed
    (response tokens scored, or tokens generated), which do not depend on reuse."""
    return {"compute_seconds": round(float(seconds), 3), "tokens": int(tokens or 0)}


def _shard_seconds(ctx: RunContext, stage: str) -> float:
    found = ctx.registry.query("SELECT coalesce(sum(seconds), 0) AS s FROM shard_runs "
                               "WHERE run_id = ? AND stage = ? AND NOT skipped", [ctx.run_id, stage])
    return float(found["s"][0])


def plan_pending(cache: ResultCache, keys: Path, samples: Path, columns: list[str], work: Path,
                 shard_size: int) -> list[Shard]:
    """Shards of the rows of ``samples`` whose content key (``keys``, a ``content_keys`` file)
    no verified part of ``cache`` holds, one row per distinct key, ``shard_size`` rows each;
    each shard's output is the cache part of exactly its keys, so any worker can compute it in
    any order and a finished one is found again by any later run. Streams: the corpus is never
    in memory. Input files of an earlier plan that this one does not use are removed."""
    pending = _sink_atomic(pl.scan_parquet(samples).select(columns)
                           .join(cache.missing(keys), on="id", how="inner", maintain_order="left"),
                           work / "pending.parquet")
    shards = []
    for i, start in enumerate(range(0, _parquet_rows(pending), shard_size)):
        part = pl.scan_parquet(pending).slice(start, shard_size).collect()
        out = cache.part_path(part[KEY].to_list())
        inp = write_parquet_atomic(part, work / "pending" / f"input-{i:05d}.parquet")
        shards.append(Shard(i, str(inp), str(out), cache.part_fingerprint(out)))
    current = {Path(s.input_path).name for s in shards}
    for stale in (work / "pending").glob("input-*.parquet"):
        if stale.name not in current:
            stale.unlink()
    return shards


def record_shard_run(ctx: RunContext, stage: str, shard: Shard, skipped: bool, seconds: float,
                     note: str | None = None) -> None:
    """One row of ``shard_runs``: which worker ran (or skipped) a shard, and for how long."""
    ctx.registry.add_rows("shard_runs", ctx.run_id, pl.DataFrame([{
        "stage": stage, "shard": shard.index, "worker": worker_identity(), "skipped": skipped,
        "seconds": seconds, "finished_at": datetime.now(timezone.utc), "note": note}]))


def worker_identity() -> str:
    """host:pid, plus the Dask worker's address when a Dask worker runs this."""
    import socket

    who = f"{socket.gethostname()}:{os.getpid()}"
    try:
        from distributed import get_worker

        return f"{who} dask={get_worker().address}"
    except (ImportError, ValueError):  # not inside a Dask worker
        return who


def run_summary(ctx: RunContext, results: list[StageResult]) -> dict:
    """Rows per stage and the accounting identity rows in = kept + set aside, end to end."""
    table = [{"stage": r.stage if r.stage != "select" else f"select:{r.extra['strategy']}",
              "rows_in": r.rows_in, "kept": r.rows_out, "set_aside": r.set_aside, "path": r.path}
             for r in results]
    filters = [r for r in results if r.stage in ("ingest", "decontaminate", "length_cap", "score")]
    summary = {"run_id": ctx.run_id, "run_dir": str(ctx.run_dir.resolve()),
               "registry": str(Path(ctx.registry_path).resolve()), "stages": table}
    if filters:
        first = filters[0].rows_in
        kept = filters[-1].rows_out
        aside = sum(r.set_aside for r in filters)
        summary["accounting"] = {"rows_in": first, "kept": kept, "set_aside": aside, "balanced": first == kept + aside}
    summary["selections"] = {r.extra["strategy"]: r.extra["jsonl"] for r in results if r.stage == "select"}
    return summary


def prune_cache(ctx: RunContext) -> dict | None:
    """``cache.max_gb``: after a run, evict least recently used cache parts beyond it, never a
    part this run used (touched since it started)."""
    max_gb = ctx.settings.cache.max_gb
    if not max_gb or not ctx.settings.cache_dir.is_dir():
        return None
    from undercurve.cache import prune

    started = ctx.registry.query("SELECT started_at FROM runs WHERE run_id = ?", [ctx.run_id])["started_at"][0]
    out = prune(ctx.settings.cache_dir, max_bytes=int(max_gb * 2**30), keep_used_since=started.timestamp())
    log.info("cache: %d parts evicted (%.1f MiB), %.1f MiB left (cache.max_gb %s)", out["parts_removed"],
             out["bytes_freed"] / 2**20, out["bytes_left"] / 2**20, max_gb)
    return out
