"""Curation tasks. Tasks return small results (paths, ids, counts), never data frames.

Prefect's result cache is off (NO_CACHE): a cached task whose Parquet output was deleted
would still "hit". Resumption is done by the stages themselves, shard by shard.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import tasks  # noqa: F401  (logging environment before Prefect loads)
from prefect import get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.figures import artifact_key, figure_index, figure_markdown
from tasks.progress import artifact
from undercurve import stages
from undercurve.config import ScoringSettings, Settings
from undercurve.io import Shard
from undercurve.registry import Registry
from undercurve.run import RunContext
from undercurve.stages import StageResult

_opts = dict(cache_policy=NO_CACHE, persist_result=False)


def start_run(settings: Settings, flow: str) -> RunContext:
    """Register the run (not a task: every task would then hang off it in the dashboard graph).

    Runs whose owner died (SIGKILL, power loss) are marked CRASHED first."""
    reg = Registry(settings.registry_path, create=True)
    reg.reap_crashed()
    run_id = reg.start_run(flow, settings.run_name, settings.model_dump(), settings.fingerprint(),
                           str(runtime.flow_run.id) if runtime.flow_run.id else None)
    get_run_logger().info("run %s (%s) -> %s, registry %s", run_id, settings.run_name, settings.run_dir,
                          settings.registry_path)
    return RunContext(settings, run_id, str(settings.registry_path))


@task(name="prepare-inputs", **_opts)
def prepare_inputs(ctx: RunContext, fresh: bool = False) -> dict:
    return stages.prepare_inputs(ctx, fresh)


@task(name="ingest", **_opts)
def ingest(ctx: RunContext, corpus: str) -> StageResult:
    return stages.ingest_stage(ctx, corpus, progress=artifact("ingest", "ingest", "rows"))


@task(name="decontaminate", **_opts)
def decontaminate(ctx: RunContext, prev: StageResult, demo_benchmark: str | None) -> StageResult:
    res = stages.decontaminate_stage(ctx, prev, demo_benchmark,
                                     progress=artifact("decontamination", "decontamination", "rows"))
    report = res.extra.get("report")
    if report:
        create_markdown_artifact(key="decontamination-report", markdown=_report_markdown(report),
                                 description="Samples removed as benchmark contamination")
    return res


@task(name="length-cap", **_opts)
def length_cap(ctx: RunContext, prev: StageResult, model: str) -> StageResult:
    return stages.length_cap_stage(ctx, prev, model, progress=artifact("length-cap", "length cap", "rows"))


@contextmanager
def accelerator(ctx: RunContext):
    """Hold the configured global concurrency limit (if any) while using the GPU."""
    name = ctx.settings.gpu_concurrency_limit
    if not name:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=1, strict=True):
        yield


@task(name="score-eas", retries=1, **_opts)
def score(ctx: RunContext, prev: StageResult, model: str) -> StageResult:
    """The whole scoring stage in one task (the vLLM engine: one worker job)."""
    with accelerator(ctx):
        return stages.score_stage(ctx, prev, model, progress=artifact("scoring", "EAS scoring (vLLM)", "shards"))


@task(name="score-plan", **_opts)
def score_plan(ctx: RunContext, prev: StageResult, model: str) -> list[Shard]:
    return stages.score_plan(ctx, prev, model)


@task(name="score-shard", task_run_name="score-shard-{shard.index}", retries=1, **_opts)
def score_shard(ctx: RunContext, shard: Shard, model: str) -> bool:
    with accelerator(ctx):
        return stages.score_shard(ctx, shard, model)


@task(name="score-merge", **_opts)
def score_merge(ctx: RunContext, prev: StageResult, shards: list[Shard], model: str) -> StageResult:
    return stages.score_merge(ctx, prev, shards, model)


@task(name="pass-rate", retries=1, **_opts)
def pass_rate(ctx: RunContext, prev: StageResult, model: str) -> StageResult:
    with accelerator(ctx):
        return stages.pass_rate_stage(ctx, prev, model,
                                      progress=artifact("pass-rate", "pass-rate rollouts", "shards"))


@task(name="pass-rate-plan", **_opts)
def pass_rate_plan(ctx: RunContext, prev: StageResult, model: str) -> list[Shard]:
    return stages.pass_rate_plan(ctx, prev, model)


@task(name="rollout-shard", task_run_name="rollout-shard-{shard.index}", retries=1, **_opts)
def rollout_shard(ctx: RunContext, shard: Shard, model: str) -> bool:
    with accelerator(ctx):
        return stages.rollout_shard(ctx, shard, model)


@task(name="pass-rate-merge", **_opts)
def pass_rate_merge(ctx: RunContext, prev: StageResult, shards: list[Shard], model: str) -> StageResult:
    return stages.pass_rate_merge(ctx, prev, shards, model)


@task(name="features", **_opts)
def features(ctx: RunContext, samples: StageResult, scores: StageResult | None,
             rates: StageResult | None) -> StageResult:
    return stages.features_stage(ctx, samples, scores, rates)


@task(name="select", task_run_name="select-{strategy}", **_opts)
def select(ctx: RunContext, feats: StageResult, samples: StageResult, strategy: str) -> StageResult:
    return stages.select_stage(ctx, feats, samples, strategy)


@task(name="finish-run", **_opts)
def finish_run(ctx: RunContext, status: str, results: list[StageResult]) -> dict:
    from undercurve.explain import curation_markdown
    from undercurve.figures import curation_figures, markdown_links
    from undercurve.io import write_text_atomic

    summary = stages.run_summary(ctx, results)
    summary["cache_pruned"] = stages.prune_cache(ctx)  # cache.max_gb; None when not set
    strategies = list(summary["selections"])
    figs = curation_figures(ctx.run_dir, strategies)  # never raises: a failed figure is "missing, because"
    summary["figures"] = {name: str(f.path) for name, f in figs.items() if f.path}
    report = curation_markdown(summary, strategies)
    # the file links its PNGs beside it; the dashboard's copy names the figures' own artifacts
    summary["report"] = str(write_text_atomic(report + "\n" + markdown_links(figs), ctx.run_dir / "curation.md").resolve())
    summary["since_last_night"] = since_last_night(ctx, strategies)
    ctx.registry.finish_run(ctx.run_id, status, summary)
    create_table_artifact(key="curation-summary", table=summary["stages"],
                          description=f"undercurve run {ctx.run_id}: rows per stage")
    create_markdown_artifact(key="curation-report", markdown=report + "\n" + figure_index("curation-fig", figs),
                             description="Rows per stage, set-aside reasons with examples, what each strategy chose")
    _figure_artifacts(figs)
    _nightly_artifacts(summary["since_last_night"])
    return summary


def _figure_artifacts(figs: dict) -> None:
    """One markdown artifact per figure (``undercurve.figures.Figure``); none can fail the run."""
    log = get_run_logger()
    for name, fig in figs.items():
        if fig.missing:
            log.info("figure %s: %s", name, fig.missing)
        try:
            create_markdown_artifact(key=artifact_key("curation-fig", name), description=fig.title,
                                     markdown=figure_markdown(name, fig.path, fig.title, fig.missing))
        except Exception:
            log.exception("figure %s: artifact not created", name)


def since_last_night(ctx: RunContext, strategies: list[str]) -> dict:
    """``undercurve.nightly.since_last_night`` for this run; a failure is reported in the
    summary and the log, never fails the run."""
    from undercurve.nightly import since_last_night as diff

    try:
        return diff(ctx.registry, ctx.run_id, ctx.run_dir, ctx.settings.series, strategies)
    except Exception as exc:  # noqa: BLE001 - a report, not a stage
        get_run_logger().exception("what changed since the last night: not computed")
        return {"series": ctx.settings.series, "error": f"{type(exc).__name__}: {exc}"}


def _nightly_artifacts(diff: dict) -> None:
    """``nightly-changes`` (markdown) and ``nightly-churn`` (selection churn per strategy)."""
    from undercurve.nightly import markdown

    if "error" in diff:
        return
    create_markdown_artifact(key="nightly-changes", markdown=markdown(diff),
                             description="What changed since the last night: rows, contamination, selections")
    create_table_artifact(key="nightly-churn", table=diff.get("selections") or [{"first_night": True}],
                          description="Selection churn per strategy since the last night")


@task(name="retention", **_opts)
def retention(ctx: RunContext) -> dict | None:
    """After a completed run: remove the older folders of its series beyond
    ``retention.keep_runs`` (``undercurve.nightly.apply_retention``); never fails the run."""
    from undercurve.nightly import retention_for_run

    try:
        return retention_for_run(ctx.registry, ctx.settings)
    except Exception as exc:  # noqa: BLE001 - the run is already COMPLETED
        get_run_logger().exception("retention: nothing removed")
        return {"error": f"{type(exc).__name__}: {exc}"}


@task(name="record-status", **_opts)
def finish_run_status(ctx: RunContext, status: str, summary: dict) -> dict:
    ctx.registry.finish_run(ctx.run_id, status, summary)
    return summary


def shard_runner(sc: ScoringSettings):
    """Task runner for the model stages' shards: sequential in-process, or a Dask cluster."""
    if not sc.on_cluster:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)  # one model in memory, all cores to torch
    from prefect_dask import DaskTaskRunner

    if sc.dask_address:
        return DaskTaskRunner(address=sc.dask_address)
    return DaskTaskRunner(cluster_class=sc.dask_cluster_class or "distributed.LocalCluster",
                          cluster_kwargs={"n_workers": sc.workers, "threads_per_worker": 1, "processes": True,
                                          "host": sc.dask_host, "dashboard_address": sc.dask_dashboard_address})


def _report_markdown(report: dict) -> str:
    lines = ["# Contamination report", "", "| benchmark | method | removed |", "|---|---|---|"]
    for row in report.get("counts", []):
        lines.append(f"| {row['benchmark']} | {row['method']} | {row['count']} |")
    if report.get("examples"):
        lines += ["", "## Examples", ""]
    for ex in report.get("examples", [])[:5]:
        lines.append(f"- `{ex['id']}` ({ex['method']}) ~ {ex['benchmark']}/{ex['benchmark_item_id']}: "
                     f"`{json.dumps(ex['evidence'])[:300]}`")
    return "\n".join(lines)
