"""The pipeline flow end to end on the tiny model, as real Prefect runs: curate -> ms-swift SFT
per selection -> evalscope Pass@1 -> comparison report, all recorded in one DuckDB file."""

import polars as pl

from conftest import demo_overrides
from undercurve.registry import Registry

SMALL = {
    "corpus.demo_size": 12, "selection.strategies": ["random", "eas", "pass_rate"],
    "selection.budget": 10,  # 2 of them held out for the validation loss; the demo's SFT settings
    "train.top_k_checkpoints": 1,
    "eval.repeats": 2,
    "eval.settings": {"generation_config": {"max_tokens": 8, "temperature": 0.6, "top_p": 0.95}, "limit": 2},
}


def test_pipeline_curates_trains_evaluates_and_reports(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    out = pipeline("configs/tiny.yaml", demo_overrides(tmp_path, **SMALL, **{"model.tiny_dir": str(tmp_path / "m")}))
    reg = Registry(tmp_path / "registry.duckdb")
    runs = reg.query("SELECT run_id, flow, status FROM runs ORDER BY started_at")
    assert runs["flow"].to_list() == ["curate", "train_eval"] and set(runs["status"]) == {"COMPLETED"}
    te_run = out["train_eval"]
    assert out["train_eval"]["curate_run_id"] == out["curate"]["run_id"]
    te_id = runs.filter(pl.col("flow") == "train_eval")["run_id"][0]

    # two checkpoints per strategy (the demo: 4 steps, a checkpoint every 2), each with a validation loss
    ckpts = reg.query("SELECT strategy, checkpoint, val_loss, path FROM checkpoints WHERE run_id = ?", [te_id])
    assert sorted(ckpts["strategy"].to_list()) == ["eas", "eas", "random", "random"]
    assert ckpts["val_loss"].null_count() == 0

    # the base model and the best checkpoint of each strategy on both benchmarks, 2 repeats each
    ev = reg.query("SELECT strategy, benchmark, pass1_mean, n_repeats, checkpoint FROM eval_results "
                   "WHERE run_id = ? ORDER BY ALL", [te_id])
    assert ev.select("strategy", "benchmark").rows() == [("base", "aime24"), ("base", "aime25"),
                                                         ("eas", "aime24"), ("eas", "aime25"),
                                                         ("random", "aime24"), ("random", "aime25")]
    assert set(ev["n_repeats"]) == {2} and ev["pass1_mean"].is_between(0, 1).all()
    best = {s: ckpts.filter(pl.col("strategy") == s).sort("val_loss")["path"][0] for s in ("eas", "random")}
    trained = ev.filter(pl.col("strategy") != "base")
    assert {s: c for s, c in trained.select("strategy", "checkpoint").unique().iter_rows()} == best

    # the comparison report: the base model and every strategy with a 95% interval, random
    # absolute and eas as a delta with its own interval, on disk and registered
    csv = pl.read_csv(te_run["csv_path"])
    assert set(csv["strategy"]) == {"base", "random", "eas"}
    summary = pl.DataFrame(te_run["summary"])
    assert summary["strategy"].to_list() == ["base", "random", "eas"]
    assert (summary["pass1_low"] <= summary["pass1"]).all() and (summary["pass1"] <= summary["pass1_high"]).all()
    assert "Pass@1 % [95% CI]" in te_run["markdown"]
    # what each signal cost: EAS one scoring pass, pass rate its rollouts, random nothing
    costs = {r["strategy"]: r for r in te_run["costs"]}
    assert (costs["random"]["model_stages"], costs["random"]["tokens"], costs["random"]["compute_seconds"]) == ("none", 0, 0)
    assert costs["eas"]["model_stages"] == "score" and costs["eas"]["tokens"] > 0 and costs["eas"]["compute_seconds"] > 0
    assert costs["pass_rate"]["model_stages"] == "pass_rate" and costs["pass_rate"]["tokens"] > 0
    assert "compute seconds (this curate run)" in te_run["markdown"]
    # the parent run's own artifact links both children and repeats their key tables
    from tasks.pipeline import pipeline_markdown

    md = pipeline_markdown(out["curate"], te_run)
    assert md.count("/runs/flow-run/") == 2 and out["curate"]["run_id"] in md and te_id in md
    assert "| ingest |" in md and "| eas |" in md
    assert md in _artifacts("pipeline-report")  # and it is in Prefect, under the parent run
    # the random tiny model never solves a problem: every pass rate is 0, the pass_rate selection
    # is empty, and the comparison says so instead of dropping the strategy
    assert "`pass_rate`: skipped: its selection is empty" in te_run["markdown"]
    assert te_run["skipped_empty"] == ["pass_rate"]
    kinds = set(reg.query("SELECT kind FROM artifacts WHERE run_id = ?", [te_id])["kind"])
    assert {"checkpoint:eas", "checkpoint:random", "comparison_md", "comparison_csv", "pass1_summary_csv"} <= kinds
    # lineage to the end: every eval report -> its checkpoint -> the selection JSONL -> ... -> ingest
    chain = reg.query("""
        WITH RECURSIVE up(id) AS (
            SELECT artifact_id FROM artifacts WHERE run_id = ? AND kind = 'eval_report:eas:aime24'
            UNION SELECT l.parent_id FROM lineage l JOIN up ON l.child_id = up.id)
        SELECT DISTINCT a.kind FROM up JOIN artifacts a ON a.artifact_id = up.id""", [te_id])
    assert {"eval_report:eas:aime24", "checkpoint:eas", "swift_jsonl:eas", "selection:eas", "samples"} <= set(chain["kind"])


def _artifacts(key: str) -> list[str]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return [a.data for a in asyncio.run(read())]
