"""End to end: curate -> train_eval, as one parent flow with two subflows."""

from __future__ import annotations

import tasks  # noqa: F401
from prefect import flow

from flows.curate import curate
from flows.train_eval import train_eval
from tasks.pipeline import pipeline_report
from undercurve.config import load_settings


@flow(name="pipeline")
def pipeline(config: str | None = "configs/demo.yaml", overrides: dict | None = None) -> dict:
    # a run name template ("nightly-{date}") is expanded once, here: both runs share one folder
    settings = load_settings(config, overrides)
    overrides = {**(overrides or {}), "run_name": settings.run_name, "run_series": settings.run_series}
    curated = curate(config, overrides)
    evaluated = train_eval(config, overrides, curate_run_id=curated["run_id"])
    pipeline_report(curated, evaluated)  # the parent run links its children and repeats their key tables
    return {"curate": curated, "train_eval": evaluated}
