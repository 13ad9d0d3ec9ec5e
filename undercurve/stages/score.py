"""The curation stages as plain functions: read Parquet, do one thing, write Parquet, record.

Each stage takes a ``RunContext`` and the path of its input, writes its output under
``<run_dir>/<stage>/`` atomically, keeps set-aside rows in ``set_aside.parquet`` beside it,
records both in the registry (with lineage to the input artifact) and returns a small
``StageResult``. Prefect tasks wrap these one to one; tests call them directly.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from undercurve.config import Settings
from undercurve.io import Shard, outputs_verified, plan_shards, write_marker, write_parquet_atomic
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


def _record(ctx: RunContext, stage: str, kind: str, path: Path, rows_in: int, kept: int, aside: pl.DataFrame,
            parents: list[str], extra: dict | None) -> StageResult:
    """Check the row balance and record a written stage output (and its set-aside rows,
    already in ``<stage>/set_aside.parquet``) with lineage in the registry."""
    if kept + aside.height != rows_in:
        raise AssertionError(f"{stage}: rows in {rows_in} != kept {kept} + set aside {aside.height}")
    reg = ctx.registry
    aid = reg.add_artifact(ctx.run_id, stage, kind, path, kept, parents=parents, meta=extra)
    if aside.height:
        reg.add_artifact(ctx.run_id, stage, "set_aside", path.parent / "set_aside.parquet", aside.height, parents=parents)
        reg.add_set_aside(ctx.run_id, stage, aside)
    log.info("%s: %d in, %d kept, %d set aside -> %s", stage, rows_in, kept, aside.height, path)
    return StageResult(stage, str(path), aid, rows_in, kept, aside.height, extra or {})


def _empty_aside() -> pl.DataFrame:
    return pl.DataFrame(schema=SET_ASIDE_SCHEMA)


# ---------------------------------------------------------------------------- stages
CURATE_STAGES = ("ingest", "decontaminate", "length_cap", "score", "pass_rate", "features", "select")


def clear_stale_outputs(ctx: RunContext) -> int:
    """Remove the final files an earlier run of this name left in the curate stage folders,
    so nothing of it can be mistaken for this run's. Sub-folders (the shard caches) stay:
    they are reused only after their fingerprint and content hash are verified."""
    n = 0
    for stage in CURATE_STAGES:
        d = ctx.run_dir / stage
        for f in (d.iterdir() if d.is_dir() else []):
            if f.is_file():
                f.unlink()
                n += 1
    if n:
        log.info("removed %d output files of an earlier run of %s", n, ctx.run_dir)
    return n


def prepare_inputs(ctx: RunContext, fresh: bool = False) -> dict:
    """Resolve the corpus source and the model (building the offline demo ones if asked);
    ``fresh`` (curate): first clear what an earlier run of this name left behind."""
    from undercurve.models import resolve_model

    if fresh:
        clear_stale_outputs(ctx)
    s = ctx.settings
    source, bench, texts = s.corpus.source, None, []
    if source == "demo":
        from undercurve.demo import tokenizer_texts, write_demo_inputs

        corpus, bench = write_demo_inputs(Path(s.workdir) / "demo-inputs" / f"n{s.corpus.demo_size}-seed{s.corpus.seed}",
                                          s.corpus.demo_size, s.corpus.seed)
        source, texts = str(corpus), tokenizer_texts(corpus)
    model_dir = s.model.tiny_dir or str(Path(s.workdir) / "models")
    model = resolve_model(s.model.path, model_dir, texts)
    return {"corpus": source, "model": model, "demo_benchmark": None if bench is None else str(bench)}


def ingest_stage(ctx: RunContext, corpus: str) -> StageResult:
    """Stream the corpus into samples.parquet + set_aside.parquet (never all rows in memory),
    then record them as ``_finish`` does. A corpus with no usable row fails the run."""
    from undercurve.ingest import NoUsableRows, ingest_to

    s = ctx.settings.corpus
    d = ctx.stage_dir("ingest")
    path, aside_path = d / "samples.parquet", d / "set_aside.parquet"
    counts = ingest_to(corpus, path, aside_path, split=s.split, limit=s.limit,
                       box_openers=ctx.settings.answers.box_openers)
    if counts.kept == 0 and counts.balanced:
        raise NoUsableRows(corpus, counts, aside_path if counts.set_aside else None)
    if counts.set_aside:
        aside = pl.read_parquet(aside_path)  # set-aside rows are few; the samples are never loaded
    else:
        aside = _empty_aside()
        aside_path.unlink(missing_ok=True)  # as _finish: no set-aside file when nothing was set aside
    return _record(ctx, "ingest", "samples", path, counts.rows_in, counts.kept, aside, [],
                   {"source": corpus, "set_aside_reasons": counts.reasons})


def decontaminate_stage(ctx: RunContext, prev: StageResult, demo_benchmark: str | None) -> StageResult:
    df = pl.read_parquet(prev.path)
    d = ctx.settings.decontam
    if not d.enabled:
        return _finish(ctx, "decontaminate", df, _empty_aside(), df.height, prev, extra={"enabled": False})
    from undercurve.decontam import decontaminate

    settings = {k: v for k, v in d.model_dump(exclude={"enabled"}).items() if v is not None}
    if demo_benchmark and "gsm8k" not in settings["local_paths"]:
        settings["local_paths"] = {**settings["local_paths"], "gsm8k": demo_benchmark}
    settings["cache_dir"] = settings.get("cache_dir") or str(Path(ctx.settings.workdir) / "cache" / "decontam")
    kept, removed, report = decontaminate(df, settings)
    audit = write_parquet_atomic(removed, ctx.stage_dir("decontaminate") / "removed_audit.parquet")
    res = _finish(ctx, "decontaminate", kept, removed.select(list(SET_ASIDE_SCHEMA)), df.height, prev,
                  extra={"report": report})
    reg = ctx.registry
    reg.add_artifact(ctx.run_id, "decontaminate", "contamination_audit", audit, removed.height,
                     parents=[prev.artifact_id], meta={"columns": removed.columns})
    counts = pl.DataFrame(report["counts"], schema={"benchmark": pl.Utf8, "method": pl.Utf8, "count": pl.Int64})
    reg.add_rows("contamination", ctx.run_id, counts.rename({"count": "n"}))
    return res


def length_cap_stage(ctx: RunContext, prev: StageResult, model: str) -> StageResult:
    from transformers import AutoTokenizer

    from undercurve.textlen import cap_length

    df = pl.read_parquet(prev.path)
    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=ctx.settings.model.trust_remote_code)
    kept, aside = cap_length(tok, df, ctx.settings.max_tokens)
    return _finish(ctx, "length_cap", kept, aside, df.height, prev, extra={"max_tokens": ctx.settings.max_tokens})


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


def _cost(seconds: float, tokens: int) -> dict:
    """What a model stage cost, for the comparison's cost per strategy: seconds of compute in
    this run (0 for work reused from an earlier run) and the tokens the model processed
    (response tokens scored, or tokens generated), which do not depend on reuse."""
    return {"compute_seconds": round(float(seconds), 3), "tokens": int(tokens or 0)}


def _shard_seconds(ctx: RunContext, stage: str) -> float:
    found = ctx.registry.query("SELECT coalesce(sum(seconds), 0) AS s FROM shard_runs "
                               "WHERE run_id = ? AND stage = ? AND NOT skipped", [ctx.run_id, stage])
    return float(found["s"][0])


def model_stages(settings: Settings) -> set[str]:
    """The model stages (``score``, ``pass_rate``) the configured strategies need."""
    return set().union(*(s.stages() for s in settings.selection.make()))


def features_stage(ctx: RunContext, samples: StageResult, scores: StageResult | None,
                   pass_rates: StageResult | None) -> StageResult:
    """One row per sample kept by EVERY stage, with every strategy's signal.

    A row set aside at scoring is not in the scores table, so the inner join keeps it out of
    every selection (the random and length strategies included)."""
    from undercurve.strategies import PASS_RATE_COLUMNS, SCORE_COLUMNS

    # lazily, summary columns only: never the samples' text or the per-token entropy lists
    df = pl.scan_parquet(samples.path).select("id", "n_tokens")
    parents = [samples.artifact_id]
    for res, cols in ((scores, SCORE_COLUMNS), (pass_rates, PASS_RATE_COLUMNS)):
        if res is not None:
            df = df.join(pl.scan_parquet(res.path).select("id", *cols), on="id", how="inner", maintain_order="left")
            parents.append(res.artifact_id)
    path = _sink_atomic(df, ctx.stage_dir("features") / "features.parquet")
    n = _parquet_rows(path)
    return _record(ctx, "features", "features", path, n, n, _empty_aside(), parents, None)


def select_stage(ctx: RunContext, features: StageResult, samples: StageResult, spec: str) -> StageResult:
    """Top-budget selection for one strategy + its ms-swift JSONL and `datasets` exports."""
    from undercurve.export import export_hf_dataset, export_swift_jsonl
    from undercurve.strategies import make, resolve, select

    sel = ctx.settings.selection
    strat = make(spec, sel.options.get(resolve(spec).name))
    strategy = strat.name
    df = pl.read_parquet(features.path)
    missing = [c for c in strat.needs if c not in df.columns]
    if missing:
        raise ValueError(f"strategy {strategy!r} needs {missing}, from a stage this config does not run")
    chosen = select(df, strat, sel.budget, sel.seed)
    d = ctx.stage_dir("select")
    path = write_parquet_atomic(chosen, d / f"{strategy}.parquet")
    sample_rows = pl.read_parquet(samples.path)
    jsonl, n = export_swift_jsonl(sample_rows, chosen, d / f"{strategy}.swift.jsonl")
    card = {"source": ctx.settings.corpus.source, "strategy": strategy, "budget": sel.budget,
            "config": ctx.settings.model_dump(mode="json"), "counts": {"rows_in": df.height, "selected": chosen.height}}
    # the dataset carries the strategy's feature columns too, so its card can summarise them
    hf, hf_rows = export_hf_dataset(sample_rows, chosen.join(df.select("id", *strat.needs), on="id", how="left"),
                                    d / f"{strategy}.hf", card)
    reg = ctx.registry
    aid = reg.add_artifact(ctx.run_id, "select", f"selection:{strategy}", path, chosen.height,
                           parents=[features.artifact_id], meta={"budget": sel.budget, "seed": sel.seed})
    jid = reg.add_artifact(ctx.run_id, "export", f"swift_jsonl:{strategy}", jsonl, n, parents=[aid, samples.artifact_id])
    reg.add_artifact(ctx.run_id, "export", f"hf_dataset:{strategy}", hf, hf_rows, parents=[aid, samples.artifact_id])
    reg.add_selection(ctx.run_id, chosen)
    if chosen.height < sel.budget:
        log.warning("select %s: only %d eligible samples for a budget of %d", strategy, chosen.height, sel.budget)
    log.info("select %s: %d samples -> %s", strategy, chosen.height, jsonl)
    return StageResult("select", str(path), aid, df.height, chosen.height, 0,
                       {"strategy": strategy, "jsonl": str(jsonl), "jsonl_artifact_id": jid, "hf_dataset": str(hf)})


# ---------------------------------------------------------------------------- helpers
ASIDE_FLAG = "_set_aside_reason"


def _with_aside(scores: pl.DataFrame, aside_rows: list[dict]) -> pl.DataFrame:
    """Shard files carry scored rows and set-aside rows together, so a shard is one file."""
    aside = pl.DataFrame(
        {"id": [r.get("id") for r in aside_rows], ASIDE_FLAG: [r["reason"] for r in aside_rows],
         "source": [r.get("source") for r in aside_rows], "detail": [str(r.get("detail") or "") for r in aside_rows]},
        schema={"id": pl.Utf8, ASIDE_FLAG: pl.Utf8, "source": pl.Utf8, "detail": pl.Utf8})
    return pl.concat([scores, aside], how="diagonal_relaxed")


def _sink_atomic(lf: pl.LazyFrame, path: Path) -> Path:
    """``write_parquet_atomic`` for a lazy frame: streamed to a temp name, then renamed."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    lf.sink_parquet(tmp, compression="zstd", statistics=True)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _parquet_rows(path: Path) -> int:
    return pl.scan_parquet(path).select(pl.len()).collect().item()  # from the footer


def _drop_stale_entropy_parts(shard_dir: Path, keep: list[Path]) -> None:
    """Parts of shards an earlier run of this name had and this one has not (the shard
    count shrank): left alone they would be read as this run's entropies."""
    names = {p.name for p in keep}
    for stale in shard_dir.glob("entropies-*.parquet"):
        if stale.name not in names:
            stale.unlink()


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
