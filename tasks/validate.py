"""Validation tasks (EAS paper section 3, EDIS best-of-N): thin wrappers over
``undercurve.validation.stages``. Results are paths and small dicts, never data frames."""

from __future__ import annotations

import tasks  # noqa: F401  (logging environment before Prefect loads)
from prefect import get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from undercurve.registry import Registry
from undercurve.run import RunContext
from undercurve.validation import stages
from undercurve.validation.config import ValidateSettings
from tasks.curate import _opts
from tasks.figures import artifact_key, figure_markdown

FIGURE_TEXT = {
    "entropy_curve": "Figure 1: the probe entropy H_t along one response; the shaded area is its EAS.",
    "metric_scatter": "Figure 2: each metric of one response per question against that question's answer entropy "
                      "over N samples, with the least-squares line and Pearson r.",
    "option_curves": "Figure 3: decayed cumulative probability of each option A-D along the response (alpha = 0.5).",
    "best_of_n": "Best-of-N: accuracy of mean, majority vote, mean-entropy, self-certainty and EDIS selection.",
}


def start_run(settings: ValidateSettings) -> RunContext:
    reg = Registry(settings.registry_path, create=True)
    reg.reap_crashed()
    run_id = reg.start_run("validate", settings.run_name, settings.model_dump(), settings.fingerprint(),
                           str(runtime.flow_run.id) if runtime.flow_run.id else None)
    get_run_logger().info("validate run %s -> %s", run_id, settings.run_dir)
    return RunContext(settings, run_id, str(settings.registry_path))  # type: ignore[arg-type]


@task(name="load-benchmark", **_opts)
def prepare(ctx: RunContext) -> dict:
    return stages.prepare_stage(ctx)


@task(name="generate-samples", retries=1, **_opts)
def generate(ctx: RunContext, questions: str, model: str) -> dict:
    return stages.generate_stage(ctx, questions, model)


@task(name="answer-entropy", **_opts)
def entropy(ctx: RunContext, samples: dict) -> dict:
    return stages.entropy_stage(ctx, samples["samples"], samples["artifact_id"])


@task(name="score-responses", **_opts)
def score(ctx: RunContext, questions: str, samples: dict, model: str) -> dict:
    return stages.score_stage(ctx, questions, samples["samples"], model, samples["artifact_id"])


@task(name="candidate-signals", **_opts)
def signals(ctx: RunContext, questions: str, samples: dict, scores: dict, model: str) -> dict:
    return stages.signals_stage(ctx, questions, samples["samples"], scores["scores"], model, samples["artifact_id"])


@task(name="analyse", **_opts)
def analyse(ctx: RunContext, ent: dict, scores: dict, sig: dict) -> dict:
    out = stages.analyse_stage(ctx, ent["entropy"], scores["scores"], sig["candidates"], sig["vocab_size"],
                               parents=[ent["artifact_id"], scores["artifact_id"], sig["artifact_id"]])
    create_markdown_artifact(key="validation-report", markdown=out["markdown"],
                             description="Pearson r vs answer entropy, best-of-N accuracy, top-K truncation")
    if out["correlation"]:
        create_table_artifact(key="validation-correlation", table=out["correlation"],
                              description="Pearson r (and p) of each metric against answer / correctness entropy")
    if out["best_of_n"]:
        create_table_artifact(key="validation-best-of-n", table=out["best_of_n"],
                              description="Accuracy per selection strategy and m (N = m*k)")
    return out


@task(name="figures", **_opts)
def figures(ctx: RunContext, ent: dict, scores: dict, sig: dict, analysis: dict) -> dict:
    out = stages.plots_stage(ctx, ent["entropy"], scores["scores"], sig["candidates"], sig["option_curves"],
                             analysis["paths"]["best_of_n"])
    if ctx.settings.plots.artifacts:
        for name, path in out.items():
            text = FIGURE_TEXT.get(name, name)
            create_markdown_artifact(key=artifact_key("validation-fig", name), description=text,
                                     markdown=figure_markdown(name, path, text))
    return out


@task(name="finish-validate-run", **_opts)
def finish(ctx: RunContext, status: str, summary: dict) -> dict:
    ctx.registry.finish_run(ctx.run_id, status, summary)
    return summary
