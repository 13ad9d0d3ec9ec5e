"""Train/evaluate tasks: one SFT per strategy, one evaluation per checkpoint."""

from __future__ import annotations

import tasks  # noqa: F401
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from undercurve import train_stages
from undercurve.run import RunContext
from tasks.curate import _opts, accelerator
from tasks.progress import artifact


@task(name="find-selections", **_opts)
def find_selections(ctx: RunContext, curate_run_id: str | None) -> tuple[str, dict[str, str]]:
    return train_stages.find_selections(ctx, curate_run_id)


@task(name="eval-benchmarks", **_opts)
def resolve_benchmarks(ctx: RunContext, demo_benchmark: str | None) -> dict[str, str | None]:
    return train_stages.resolve_benchmarks(ctx, demo_benchmark)


def has_rows(jsonl: str) -> bool:
    with open(jsonl, encoding="utf-8") as fh:
        return any(line.strip() for line in fh)


@task(name="sft", task_run_name="sft-{strategy}", **_opts)
def train(ctx: RunContext, strategy: str, jsonl: str, model: str) -> dict:
    with accelerator(ctx):
        return train_stages.train_strategy(ctx, strategy, jsonl, model,
                                           progress=artifact(f"sft-{strategy}", f"SFT {strategy}", "steps"))


@task(name="evaluate", task_run_name="eval-{strategy}-rank{rank}", **_opts)
def evaluate(ctx: RunContext, strategy: str, checkpoint: str, rank: int, model_label: str,
             benchmarks: dict[str, str | None]) -> list[dict]:
    with accelerator(ctx):
        return train_stages.evaluate_checkpoint(
            ctx, strategy, checkpoint, rank, model_label, benchmarks,
            progress=artifact(f"eval-{strategy}-rank{rank}", f"evaluation {strategy} rank {rank}", "samples"))


@task(name="comparison-report", **_opts)
def report(ctx: RunContext, rows: list[dict], not_run: dict[str, str], curate_run_id: str | None = None,
           strategies: list[str] | None = None) -> dict:
    costs = train_stages.strategy_costs(ctx, curate_run_id, strategies or []) if curate_run_id else None
    out = train_stages.comparison_report(ctx, rows, not_run, costs)
    create_markdown_artifact(key="strategy-comparison", markdown=out["markdown"],
                             description="Average Pass@1 with 95% intervals, the base model as a row, what is inside "
                                         "the noise, cost per strategy (paper Table 3)")
    create_table_artifact(key="eval-results", table=[{k: r[k] for k in ("strategy", "checkpoint_rank", "benchmark",
                          "pass1_mean", "pass1_std", "n_repeats")} for r in rows])
    return out
