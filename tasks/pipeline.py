"""The pipeline's own report: its child runs, linked, with their key tables repeated, so the
parent run tells the story without opening each child."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.links import flow_run_url
from undercurve.registry import Registry
from undercurve.report import summary_markdown


def _md_table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def pipeline_markdown(curated: dict, evaluated: dict) -> str:
    reg = Registry(curated["registry"], create=False)
    ids = [curated["run_id"], evaluated["run_id"]]
    runs = reg.query("SELECT run_id, flow, status, prefect_flow_run_id FROM runs WHERE run_id IN (?, ?) "
                     "ORDER BY started_at", ids).to_dicts()
    children = [{"flow": r["flow"], "run": r["run_id"], "status": r["status"],
                 "dashboard": f"[open]({flow_run_url(r['prefect_flow_run_id'])})" if r["prefect_flow_run_id"] else ""}
                for r in runs]
    parts = ["# Pipeline run", "## Child runs", _md_table(children, ["flow", "run", "status", "dashboard"]),
             "## Curation: rows per stage", _md_table(curated["stages"], ["stage", "rows_in", "kept", "set_aside"])]
    if evaluated.get("summary"):
        parts += ["## Which strategy trained the best model", summary_markdown(pl.DataFrame(evaluated["summary"]))]
    if evaluated.get("skipped_empty") or evaluated.get("failed"):
        parts.append(f"Skipped: {evaluated.get('skipped_empty') or 'none'}; failed: {evaluated.get('failed') or 'none'}.")
    return "\n\n".join(parts) + "\n"


@task(name="pipeline-report")
def pipeline_report(curated: dict, evaluated: dict) -> str:
    markdown = pipeline_markdown(curated, evaluated)
    create_markdown_artifact(key="pipeline-report", markdown=markdown,
                             description="The child runs (linked), rows per stage, the strategy comparison")
    return markdown
