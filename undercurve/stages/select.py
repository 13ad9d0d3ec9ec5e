"""Selection: one strategy's top-budget samples, exported as ms-swift JSONL and a ``datasets``
dataset. Reads the features table whole (summary columns only) but, of the samples, only the
chosen rows."""

from __future__ import annotations

import logging

import polars as pl

from undercurve.io import write_parquet_atomic
from undercurve.run import RunContext
from undercurve.stages.result import StageResult

log = logging.getLogger("undercurve")


def select_stage(ctx: RunContext, features: StageResult, samples: StageResult, spec: str) -> StageResult:
    """Top-budget selection for one strategy + its ms-swift JSONL and `datasets` exports."""
    from undercurve.export import export_hf_dataset, export_swift_jsonl, read_selected
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
    sample_rows = read_selected(samples.path, chosen)  # the chosen rows only, never the corpus
    jsonl, n = export_swift_jsonl(sample_rows, chosen, d / f"{strategy}.swift.jsonl")
    card = {"source": ctx.settings.corpus.source, "strategy": strategy, "budget": sel.budget,
            "config": ctx.settings.model_dump(mode="json"), "counts": {"rows_in": df.height, "selected": chosen.height}}
    # the dataset carries the strategy's feature columns too, so its card can summarise them
    hf, hf_rows = export_hf_dataset(sample_rows, chosen.join(df.select("id", *strat.needs), on="id", how="left"),
                                    d / f"{strategy}.hf", card)
    with ctx.registry.batch() as reg:
        aid = reg.add_artifact(ctx.run_id, "select", f"selection:{strategy}", path, chosen.height,
                               parents=[features.artifact_id], meta={"budget": sel.budget, "seed": sel.seed})
        jid = reg.add_artifact(ctx.run_id, "export", f"swift_jsonl:{strategy}", jsonl, n,
                               parents=[aid, samples.artifact_id])
        reg.add_artifact(ctx.run_id, "export", f"hf_dataset:{strategy}", hf, hf_rows, parents=[aid, samples.artifact_id])
        reg.add_selection(ctx.run_id, chosen)
    if chosen.height < sel.budget:
        log.warning("select %s: only %d eligible samples for a budget of %d", strategy, chosen.height, sel.budget)
    log.info("select %s: %d samples -> %s", strategy, chosen.height, jsonl)
    return StageResult("select", str(path), aid, df.height, chosen.height, 0,
                       {"strategy": strategy, "jsonl": str(jsonl), "jsonl_artifact_id": jid, "hf_dataset": str(hf)})
