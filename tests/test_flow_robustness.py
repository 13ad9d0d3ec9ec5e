"""Production behaviour of the curate flow: bad input never crashes a run and never
disappears; concurrent runs share one DuckDB registry without losing writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from undercurve.registry import Registry

REPO = Path(__file__).resolve().parent.parent
GOOD = {"messages": [{"role": "user", "content": "What is 6 times 7?", "info": {"reference_answer": "42"}},
                     {"role": "assistant", "content": "<think>6*7 = 42</think> So \\boxed{42}."}]}


def _bad_corpus(path: Path) -> int:
    lines = [json.dumps({**GOOD, "id": f"ok-{i}"}) for i in range(6)]
    lines += [
        '{"id": "broken", "messages": [',                                          # malformed JSON
        b'{"id": "latin1", "prompt": "caf\xe9?", "response": "\\\\boxed{1}"}',     # not UTF-8
        json.dumps({"id": "no-prompt", "response": "\\boxed{1}", "answer": "1"}),  # missing field
        json.dumps({"id": "empty", "prompt": "q", "response": "   "}),             # empty field
        json.dumps({"id": "no-box", "prompt": "q", "response": "I think 4."}),     # no \boxed{}
        json.dumps({"id": "unparseable", "prompt": "q", "response": "\\boxed{4"}), # unparseable answer
        json.dumps({**GOOD, "id": "ok-0"}),                                        # duplicate id
        json.dumps({"id": "long", "prompt": "Long?", "response": "word " * 3000 + "\\boxed{1}"}),  # over-long
    ]
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return len(lines)


def _create_concurrency_limit(name: str) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async def create():
        async with get_client() as client:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))

    asyncio.run(create())


def test_bad_input_is_set_aside_counted_and_reported(prefect_harness, tmp_path):
    from flows.curate import curate

    _create_concurrency_limit("gpu-test")  # strict: the run fails if the GPU stages cannot take it
    corpus = tmp_path / "bad.jsonl"
    n = _bad_corpus(corpus)
    summary = curate("configs/tiny.yaml", {
        "workdir": str(tmp_path), "corpus.source": str(corpus), "max_tokens": 1000,
        "decontam.enabled": False, "pass_rate.enabled": False, "selection.budget": 3,
        "selection.strategies": ["random", "length", "eas"], "model.tiny_dir": str(tmp_path / "models"),
        "gpu_concurrency_limit": "gpu-test"})
    acc = summary["accounting"]
    assert acc == {"rows_in": n, "kept": 6, "set_aside": n - 6, "balanced": True}
    aside = pl.concat([pl.read_parquet(p) for p in (tmp_path / "demo").glob("*/set_aside.parquet")])
    assert set(aside["id"].drop_nulls()) >= {"no-prompt", "empty", "no-box", "unparseable", "ok-0", "long"}
    assert aside.height == n - 6 and aside["reason"].null_count() == 0
    reg = Registry(tmp_path / "registry.duckdb")
    counts = reg.query("SELECT stage, sum(n) AS n FROM set_aside WHERE run_id = ? GROUP BY stage ORDER BY stage",
                       [summary["run_id"]])
    assert dict(counts.iter_rows()) == {"ingest": n - 7, "length_cap": 1}


def test_two_concurrent_flow_runs_share_the_registry(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    procs = []
    for name in ("a", "b"):
        cmd = [sys.executable, "-m", "flows.cli", "run", "configs/tiny.yaml", "--flow", "curate",
               "--set", f"workdir={tmp_path}", "--set", f"run_name=run-{name}", "--set", "corpus.demo_size=12",
               "--set", "pass_rate.enabled=false", "--set", "selection.strategies=[random, length]",
               "--set", f"model.tiny_dir={tmp_path}/models-{name}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    reg = Registry(tmp_path / "registry.duckdb")
    runs = reg.query("SELECT run_id, run_name, status FROM runs ORDER BY run_name")
    assert runs["run_name"].to_list() == ["run-a", "run-b"] and set(runs["status"]) == {"COMPLETED"}
    per_run = reg.query("SELECT run_id, count(*) AS n FROM artifacts GROUP BY run_id")
    assert per_run["n"].n_unique() == 1 and per_run.height == 2  # same DAG, same number of artifacts
    sel = reg.query("SELECT run_id, strategy, count(*) AS n FROM selections GROUP BY ALL")
    assert sel.height == 4 and set(sel["n"]) == {12}  # 12 demo problems survive decontamination


def test_missing_gpu_concurrency_limit_fails_loudly(prefect_harness):
    from types import SimpleNamespace

    import pytest
    from prefect import flow

    from tasks.curate import accelerator

    ctx = SimpleNamespace(settings=SimpleNamespace(gpu_concurrency_limit="no-such-limit"))

    @flow
    def uses_gpu():
        with accelerator(ctx):
            return 1

    with pytest.raises(Exception, match="no-such-limit"):
        uses_gpu()
