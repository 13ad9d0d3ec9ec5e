"""The curate DAG, end to end, as a real Prefect flow run on CPU: real tokenizer, real torch
scoring, real vLLM rollouts (subprocess), a real DuckDB file."""

import json

import polars as pl
import pytest

from conftest import demo_overrides
from undercurve.registry import Registry


@pytest.fixture(scope="module")
def curated(prefect_harness, tmp_path_factory):
    from flows.curate import curate

    workdir = tmp_path_factory.mktemp("curate")
    summary = curate("configs/tiny.yaml", demo_overrides(workdir))
    return workdir, summary


def test_every_row_is_accounted_for(curated):
    """Counted from the files and the registry, not from the numbers the flow reports."""
    workdir, summary = curated
    corpus = next((workdir / "demo-inputs").glob("*/corpus.jsonl"))
    lines_in = sum(1 for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip())
    run_dir = workdir / "demo"
    kept = pl.read_parquet(run_dir / "score" / "scores.parquet").height
    aside_files = sorted(run_dir.glob("*/set_aside.parquet"))
    aside = pl.concat([pl.read_parquet(p) for p in aside_files])
    assert lines_in == 20 + 2 + 3 + 1  # demo_size + planted leaks + broken lines + duplicate
    assert lines_in == kept + aside.height
    # no set-aside row is also kept (a duplicate id's first copy is kept, its repeat is not)
    not_dup = aside.filter(pl.col("reason") != "duplicate id")["id"].drop_nulls()
    assert not not_dup.is_in(pl.read_parquet(run_dir / "score" / "scores.parquet")["id"]).any()
    per_stage = dict(aside.group_by("stage").len().iter_rows())
    assert per_stage["ingest"] == 4  # the demo's three broken lines + one duplicate id
    assert per_stage["decontaminate"] == 2  # the two planted benchmark problems
    # the summary and the registry say the same
    acc = summary["accounting"]
    assert (acc["rows_in"], acc["kept"], acc["set_aside"]) == (lines_in, kept, aside.height)
    reg = Registry(workdir / "registry.duckdb").query(
        "SELECT stage, sum(n)::BIGINT AS n FROM set_aside WHERE run_id = ? GROUP BY stage", [summary["run_id"]])
    assert dict(reg.iter_rows()) == per_stage


def test_registry_records_runs_artifacts_lineage(curated):
    workdir, summary = curated
    reg = Registry(workdir / "registry.duckdb")
    run = reg.query("SELECT status, config_hash, code_version FROM runs WHERE run_id = ?", [summary["run_id"]])
    assert run["status"].to_list() == ["COMPLETED"]
    arts = reg.query("SELECT stage, kind, rows, sha256, path FROM artifacts WHERE run_id = ?", [summary["run_id"]])
    stages = set(arts["stage"])
    assert {"ingest", "decontaminate", "length_cap", "score", "pass_rate", "features", "select", "export"} <= stages
    assert arts.filter(pl.col("kind") == "samples")["sha256"].null_count() == 0
    # lineage reaches from every export back to ingestion
    chain = reg.query("""
        WITH RECURSIVE up(id, depth) AS (
            SELECT artifact_id, 0 FROM artifacts WHERE run_id = ? AND kind = 'swift_jsonl:eas'
            UNION ALL SELECT l.parent_id, depth + 1 FROM lineage l JOIN up ON l.child_id = up.id)
        SELECT DISTINCT a.stage FROM up JOIN artifacts a ON a.artifact_id = up.id""", [summary["run_id"]])
    assert {"export", "select", "features", "score", "length_cap", "decontaminate", "ingest"} <= set(chain["stage"])
    reasons = reg.query("SELECT stage, reason, n FROM set_aside WHERE run_id = ?", [summary["run_id"]])
    assert reasons["n"].sum() == summary["accounting"]["set_aside"]


def test_selections_follow_their_signals(curated):
    workdir, summary = curated
    run_dir = workdir / "demo"
    feats = pl.read_parquet(run_dir / "features" / "features.parquet")
    eas = pl.read_parquet(run_dir / "select" / "eas.parquet")
    assert eas.height == 6
    top = feats.filter(pl.col("eas").is_not_null()).sort("eas", descending=True).head(6)
    assert eas["id"].to_list() == top["id"].to_list()
    rates = pl.read_parquet(run_dir / "pass_rate" / "pass_rates.parquet")
    rollouts = pl.read_parquet(run_dir / "pass_rate" / "rollouts.parquet")
    assert set(rates["n"]) == {4} and rollouts.height == 4 * rates.height
    lines = (run_dir / "select" / "random.swift.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["messages"][1]["role"] == "assistant"


def test_prefect_recorded_each_stage_as_a_task_run(curated):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    async def task_names():
        async with get_client() as client:
            flows = await client.read_flow_runs()
            curate_runs = [f for f in flows if f.state and f.state.is_completed()]
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [f.id for f in curate_runs]}))
            return {t.name.rsplit("-", 1)[0] if not t.name.startswith("select-") else t.name for t in tasks}

    names = asyncio.run(task_names())
    assert {"ingest", "decontaminate", "length-cap", "score-plan", "score-shard", "score-merge", "pass-rate",
            "select-eas", "select-random"} <= names


def test_rerun_resumes_and_gives_identical_selections(curated, prefect_harness):
    from flows.curate import curate

    workdir, first = curated
    # the scores live in the workdir's content-keyed cache, one part per shard scored
    parts = sorted(p for p in (workdir / "cache" / "score").glob("*/part-*.parquet") if ".entropies." not in p.name)
    assert len(parts) >= 2
    shard, damaged = parts[0], parts[1]
    before = shard.stat().st_mtime_ns
    damaged.write_bytes(damaged.read_bytes()[:-100])  # truncated on disk after it finished
    selections = {s: (workdir / "demo" / "select" / f"{s}.parquet").read_bytes() for s in ("random", "length", "eas", "pass_rate")}
    second = curate("configs/tiny.yaml", demo_overrides(workdir))
    assert second["run_id"] != first["run_id"]
    assert shard.stat().st_mtime_ns == before  # finished, verified shard not recomputed
    notes = Registry(workdir / "registry.duckdb").query(
        "SELECT shard, skipped, note FROM shard_runs WHERE run_id = ? ORDER BY shard", [second["run_id"]])
    # only the damaged part's rows were pending, as one shard, and it said why it ran
    assert notes.rows() == [(0, False, "output failed verification: recomputed")]
    for s, data in selections.items():
        assert (workdir / "demo" / "select" / f"{s}.parquet").read_bytes() == data, s


def test_cli_inspects_the_registry(curated, capsys):
    from flows.cli import main

    workdir, summary = curated
    reg = str(workdir / "registry.duckdb")
    assert main(["runs", "--registry", reg]) == 0
    assert summary["run_id"] in capsys.readouterr().out
    assert main(["show", summary["run_id"], "--registry", reg]) == 0
    shown = capsys.readouterr().out
    assert "swift_jsonl:eas" in shown and "contamination:ngram" in shown
    assert main(["show", summary["run_id"], "--registry", reg, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run"][0]["status"] == "COMPLETED"
    assert {a["kind"] for a in shown["artifacts"]} >= {"samples", "scores", "swift_jsonl:eas"}
    assert sum(r["n"] for r in shown["set_aside"]) == summary["accounting"]["set_aside"]
    assert main(["show", "no-such-run", "--registry", reg]) == 1  # an unknown id is an error
    assert "no run 'no-such-run'" in capsys.readouterr().err
    assert main(["compare", "--registry", reg]) == 0
    out = capsys.readouterr().out
    assert "eas" in out and "length" in out  # pass_rate: no eligible sample with the random model


def _flow_run_id(workdir, run_id) -> str:
    return str(Registry(workdir / "registry.duckdb").query(
        "SELECT prefect_flow_run_id FROM runs WHERE run_id = ?", [run_id])["prefect_flow_run_id"][0])


def test_long_stages_report_progress_in_prefect(curated):
    """Ingest, decontamination, length cap, scoring shards and rollout steps update Prefect
    progress artifacts to 100 %: this run's own (its flow run and its subflows), not another
    test's run with the same artifact key."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey,
                                                FlowRunFilter, FlowRunFilterParentFlowRunId)

    workdir, summary = curated
    parent = _flow_run_id(workdir, summary["run_id"])

    async def progress(key):
        async with get_client() as client:
            children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
            runs = [parent, *(str(r.id) for r in children)]
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=runs)))
            return [(a.type, a.data, a.description) for a in arts]

    for key, unit in (("ingest", "rows"), ("decontamination", "rows"), ("length-cap", "rows"),
                      ("scoring", "shards"), ("pass-rate", "shards")):
        arts = asyncio.run(progress(key))
        assert len(arts) == 1, f"{key}: {len(arts)} progress artifacts for this run: {arts}"
        kind, data, description = arts[0]
        assert kind == "progress" and float(data) == 100.0 and unit in description, arts


def test_one_name_per_token_count(curated):
    """Every Parquet file the run wrote (and the cache parts it used) names a token count
    chat_tokens or response_tokens: never n_tokens, length or scored_tokens."""
    workdir, summary = curated
    files = sorted((workdir / "demo").rglob("*.parquet")) + sorted((workdir / "cache").rglob("*.parquet"))
    cols = {c: str(p.relative_to(workdir)) for p in files for c in pl.read_parquet_schema(p)}
    counts = {c for c in cols if c.endswith("tokens") or c in ("length", "n_tokens", "scored_tokens")}
    assert counts == {"chat_tokens", "response_tokens"}, {c: cols[c] for c in counts}


def test_the_run_explains_itself(curated):
    """curation.md (also a Prefect artifact): reasons with examples, per-strategy means, overlap."""
    workdir, summary = curated
    report = (workdir / "demo" / "curation.md").read_text()
    assert summary["report"].endswith("curation.md")
    assert "| ingest | duplicate id | 1 | demo-0:" in report  # the reason, its count and an example
    assert "| decontaminate |" in report
    feats = pl.read_parquet(workdir / "demo" / "features" / "features.parquet")
    eas_ids = pl.read_parquet(workdir / "demo" / "select" / "eas.parquet")["id"]
    mean_eas = feats.filter(pl.col("id").is_in(eas_ids.implode()))["eas"].mean()
    assert f"| eas | {eas_ids.len()} | " in report and f"{mean_eas:.3g}" in report
    rand_ids = set(pl.read_parquet(workdir / "demo" / "select" / "random.parquet")["id"])
    jaccard = len(rand_ids & set(eas_ids)) / len(rand_ids | set(eas_ids))
    assert any(line.startswith("| random | eas |") and f"{jaccard:.3g}" in line for line in report.splitlines())


def test_the_run_draws_its_figures(curated):
    """finish-run: one PNG per signal and per strategy's entropy curves, in curation.md and as
    Prefect artifacts with the PNG embedded."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    workdir, summary = curated
    run_dir = workdir / "demo"
    figs = summary["figures"]
    assert {"scores-eas", "scores-pass_rate", "entropy-eas", "entropy-random"} <= set(figs)
    report = (run_dir / "curation.md").read_text()
    assert "## Figures" in report and "(figures/entropy-eas.png)" in report
    empty = {s for s in ("eas", "length", "random", "pass_rate")
             if pl.read_parquet(run_dir / "select" / f"{s}.parquet").is_empty()}  # pass_rate can be, in the demo
    missing = [line for line in report.splitlines() if "figure missing" in line]
    assert sorted(missing) == [f"entropy-{s}: figure missing: the selection is empty" for s in sorted(empty)], missing

    # this run's artifact: other tests of the session make artifacts with the same key
    flow_run_id = _flow_run_id(workdir, summary["run_id"])

    async def markdown(key):
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            return [a.data for a in arts]

    data = asyncio.run(markdown("curation-fig-entropy-eas"))
    assert len(data) == 1 and "data:image/png;base64," in data[0] and figs["entropy-eas"] in data[0]
    # the dashboard's copy of curation.md names the figures' artifacts, never a file link it cannot load
    (report,) = asyncio.run(markdown("curation-report"))
    from tasks.figures import artifact_key

    assert "](figures/" not in report and all(f"`{artifact_key('curation-fig', name)}`" in report for name in figs)


def test_the_dashboard_graph_is_the_pipeline(curated):
    """Prefect draws a task under the tasks whose outputs it reads (task_inputs). The curate
    run's graph must be the pipeline of the README, edge for edge: no hub every task hangs off."""
    import asyncio
    import re

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    workdir, summary = curated
    flow_run_id = _flow_run_id(workdir, summary["run_id"])

    async def edges():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
        name = {r.id: r.name if r.name.startswith("select-") else re.sub(r"-[0-9a-f]+$", "", r.name) for r in runs}
        return {(name[i.id], name[r.id]) for r in runs for ins in r.task_inputs.values() for i in ins
                if getattr(i, "id", None) in name}

    strategies = ("random", "length", "pass_rate", "eas")
    model = {"ingest", "decontaminate", "length-cap", "score-plan", "score-shards", "score-merge", "pass-rate"}
    expected = {("prepare-inputs", t) for t in model - {"ingest"}} | {("prepare-inputs", "ingest")} | {
        ("ingest", "decontaminate"), ("decontaminate", "length-cap"),
        ("length-cap", "score-plan"), ("score-plan", "score-shards"), ("score-plan", "score-merge"),
        ("score-shards", "score-merge"), ("length-cap", "score-merge"), ("length-cap", "pass-rate"),
        ("length-cap", "features"), ("score-merge", "features"), ("pass-rate", "features"),
        ("finish-run", "retention"),
        # finish-run reports every stage's result (and so reads what prepare-inputs resolved)
        *{(t, "finish-run") for t in ("prepare-inputs", "ingest", "decontaminate", "length-cap", "score-merge",
                                      "pass-rate")},
        *{p for s in strategies for p in (("features", f"select-{s}"), ("length-cap", f"select-{s}"),
                                          (f"select-{s}", "finish-run"))}}
    assert asyncio.run(edges()) == expected
