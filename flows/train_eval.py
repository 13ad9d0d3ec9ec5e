"""Train and evaluate every strategy's selection: SFT -> top-k checkpoints -> evalscope ->
comparison table. One strategy failing does not lose the others' results."""

from __future__ import annotations

import tasks  # noqa: F401
from prefect import flow

from tasks import curate as c
from tasks import train_eval as t
from undercurve.config import load_settings
from undercurve.run import cancel_on_sigterm, tracked


@flow(name="train_eval")
def train_eval(config: str | None = "configs/demo.yaml", overrides: dict | None = None,
               curate_run_id: str | None = None) -> dict:
    settings = load_settings(config, overrides)
    cancel_on_sigterm()
    ctx = c.start_run(settings, "train_eval")
    with tracked(ctx):  # the same lock, heartbeat and final states as curate
        return _train_eval(ctx, settings, curate_run_id)


def _train_eval(ctx, settings, curate_run_id: str | None) -> dict:
    inputs = c.prepare_inputs(ctx)
    source_run, selections = t.find_selections(ctx, curate_run_id)
    benchmarks = t.resolve_benchmarks(ctx, inputs["demo_benchmark"])
    rows, failed, skipped = [], [], []
    # the model before SFT: the row every strategy's training should beat
    base = t.evaluate(ctx, "base", inputs["model"], 1, settings.model.path, benchmarks, return_state=True)
    if base.is_failed():
        failed.append("base")
    else:
        rows += base.result()
    for strategy, jsonl in selections.items():  # sequential: one accelerator
        if not t.has_rows(jsonl):
            skipped.append(strategy)  # e.g. pass_rate when every sample passed 0/4 or 4/4
            continue
        trained = t.train(ctx, strategy, jsonl, inputs["model"], return_state=True)
        if trained.is_failed():
            failed.append(strategy)
            continue
        for rank, ckpt in enumerate(trained.result()["top"], start=1):
            ev = t.evaluate(ctx, strategy, ckpt, rank, settings.model.path, benchmarks, return_state=True)
            if ev.is_failed():
                failed.append(f"{strategy}:rank{rank}")
            else:
                rows += ev.result()
    not_run = {s: "skipped: its selection is empty (e.g. no pass rate strictly between 0 and 1)" for s in skipped}
    not_run |= {s: "failed: see the run's log and the registry" for s in failed}
    report = t.report(ctx, rows, not_run, source_run, list(selections)) if rows else {}
    summary = {"run_id": ctx.run_id, "curate_run_id": source_run, "failed": failed, "skipped_empty": skipped, **report}
    c.finish_run_status(ctx, "FAILED" if failed else "COMPLETED", summary)
    if failed:
        raise RuntimeError(f"train/eval failed for {failed}; results of the others are in the registry")
    return summary
