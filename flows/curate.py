"""The curation DAG: ingest -> decontaminate -> length cap -> {EAS score, pass rate} ->
features -> one selection (and ms-swift export) per strategy. On a Dask cluster
(``scoring.workers`` > 1 or ``scoring.dask_address``) both model stages are plan -> shards
-> merge, the shards on the workers."""

from __future__ import annotations

import tasks  # noqa: F401
from prefect import flow
from prefect.futures import as_completed

from tasks import curate as t
from tasks.progress import artifact
from undercurve.config import load_settings
from undercurve.run import cancel_on_sigterm, tracked
from undercurve.scoring import scores_in_shards
from undercurve.stages import model_stages


def _fan_out(shard_task, ctx, shards: list, model: str, key: str, title: str) -> list[bool]:
    futures = [shard_task.submit(ctx, shard, model) for shard in shards]
    progress = artifact(key, title, "shards")
    for done, _ in enumerate(as_completed(futures), start=1):
        progress(done, len(futures))
    return [f.result() for f in futures]  # raises if a shard failed after its retry


@flow(name="score-shards")
def score_shards(ctx, shards: list, model: str) -> list[bool]:
    """Fan the scoring shards out over the task runner (threads, or Dask workers)."""
    return _fan_out(t.score_shard, ctx, shards, model, "scoring", "EAS scoring")


@flow(name="rollout-shards")
def rollout_shards(ctx, shards: list, model: str) -> list[bool]:
    """Fan the rollout shards out over the Dask workers, one worker job each."""
    return _fan_out(t.rollout_shard, ctx, shards, model, "pass-rate", "pass-rate rollouts")


@flow(name="curate")
def curate(config: str | None = "configs/demo.yaml", overrides: dict | None = None) -> dict:
    settings = load_settings(config, overrides)
    cancel_on_sigterm()
    ctx = t.start_run(settings, "curate")
    results = []
    with tracked(ctx):  # lock, heartbeat, FAILED/CANCELLED with a reason
        inputs = t.prepare_inputs(ctx, fresh=True)
        ing = t.ingest(ctx, inputs["corpus"])
        dec = t.decontaminate(ctx, ing, inputs["demo_benchmark"])
        cap = t.length_cap(ctx, dec, inputs["model"])
        results += [ing, dec, cap]
        strategies = settings.selection.strategies
        needed = model_stages(settings)
        # The two model stages run one after the other (one accelerator each time).
        scores = None
        if "score" in needed and scores_in_shards(settings.scoring):
            shards = t.score_plan(ctx, cap, inputs["model"])
            scored = score_shards.with_options(task_runner=t.shard_runner(settings.scoring))(
                ctx, shards, inputs["model"], return_state=True)
            scored.result()  # raises if a shard failed after its retry
            # wait_for: the merge hangs off the shards in the dashboard graph, as in the pipeline
            scores = t.score_merge(ctx, cap, shards, inputs["model"], wait_for=[scored])
        elif "score" in needed:
            scores = t.score(ctx, cap, inputs["model"])
        rates = None
        if "pass_rate" in needed and settings.pass_rate.enabled and settings.scoring.on_cluster:
            shards = t.pass_rate_plan(ctx, cap, inputs["model"])
            rolled = rollout_shards.with_options(task_runner=t.shard_runner(settings.scoring))(
                ctx, shards, inputs["model"], return_state=True)
            rolled.result()
            rates = t.pass_rate_merge(ctx, cap, shards, inputs["model"], wait_for=[rolled])
        elif "pass_rate" in needed and settings.pass_rate.enabled:
            rates = t.pass_rate(ctx, cap, inputs["model"])  # one worker job: the engine loads once
        results += [r for r in (scores, rates) if r is not None]
        feats = t.features(ctx, cap, scores, rates)
        futures = [t.select.submit(ctx, feats, cap, s) for s in strategies]
        results += [f.result() for f in futures]  # .result() raises if a selection failed
        summary = t.finish_run(ctx, "COMPLETED", results)
        t.retention(ctx)  # older folders of the run's series beyond retention.keep_runs
        return summary


if __name__ == "__main__":
    import sys

    print(curate(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml"))
