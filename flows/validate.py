"""Metric validation DAG (EAS paper section 3, EDIS best-of-N): benchmark -> N samples per
question (vLLM) -> answer entropy -> score one response per question -> per-sample signals
-> Pearson r / best-of-N / top-K tables -> figures (PNG + Prefect artifacts)."""

from __future__ import annotations

import tasks  # noqa: F401
from prefect import flow

from tasks import validate as t
from undercurve.run import cancel_on_sigterm, tracked
from undercurve.validation.config import load_validate_settings


@flow(name="validate")
def validate(config: str | None = "configs/validate_demo.yaml", overrides: dict | None = None) -> dict:
    settings = load_validate_settings(config, overrides)
    cancel_on_sigterm()
    ctx = t.start_run(settings)
    with tracked(ctx):
        prep = t.prepare(ctx)
        gen = t.generate(ctx, prep["questions"], prep["model"])
        ent = t.entropy(ctx, gen)
        scores = t.score(ctx, prep["questions"], gen, prep["model"])
        sig = t.signals(ctx, prep["questions"], gen, scores, prep["model"])
        analysis = t.analyse(ctx, ent, scores, sig)
        figs = t.figures(ctx, ent, scores, sig, analysis)
        summary = {"run_id": ctx.run_id, "run_dir": str(settings.run_dir.resolve()),
                   "questions": prep["n_questions"], "samples": gen["rows"], "scored": scores["scored"],
                   "set_aside": scores["set_aside"], "report": analysis["paths"]["report"],
                   "markdown": analysis["markdown"], "figures": figs}
        return t.finish(ctx, "COMPLETED", summary)


if __name__ == "__main__":
    import sys

    print(validate(sys.argv[1] if len(sys.argv) > 1 else "configs/validate_demo.yaml")["markdown"])
