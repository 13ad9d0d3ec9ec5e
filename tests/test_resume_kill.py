"""A curate run killed with SIGKILL in the middle of scoring, rerun, finishes with results
identical to an uninterrupted run, no duplicates, and finished shards not recomputed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
SETS = ["corpus.demo_size=16", "scoring.shard_size=2", "pass_rate.enabled=false",
        "selection.strategies=[random, eas]", "selection.budget=5"]


def _cmd(workdir):
    cmd = [sys.executable, "-m", "flows.cli", "run", "configs/tiny.yaml", "--flow", "curate"]
    for s in SETS + [f"workdir={workdir}", f"model.tiny_dir={workdir.parent / 'models'}"]:
        cmd += ["--set", s]
    return cmd


def _env():
    from prefect.settings import PREFECT_API_URL

    # the session's test server, so the child does not start its own
    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}


def test_sigkill_mid_scoring_then_resume(prefect_harness, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    parts = killed / "cache" / "score"  # the content-keyed cache: one part per shard scored
    pending = killed / "demo" / "score" / "pending"
    proc = subprocess.Popen(_cmd(killed), cwd=REPO, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("*/part-*.fp"))) < 2:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p: p.stat().st_mtime_ns for p in parts.glob("*/part-*.parquet")
                   if p.with_suffix(".fp").exists()}
    n_inputs = len(list(pending.glob("input-*.parquet")))
    assert 2 <= len(done_before) < n_inputs, "kill did not land in the middle of scoring"
    assert not (killed / "demo" / "score" / "scores.parquet").exists()

    subprocess.run(_cmd(killed), cwd=REPO, env=_env(), check=True, capture_output=True)
    for part, mtime in done_before.items():
        assert part.stat().st_mtime_ns == mtime, f"{part.name} was recomputed"

    subprocess.run(_cmd(clean), cwd=REPO, env=_env(), check=True, capture_output=True)
    a = pl.read_parquet(killed / "demo" / "score" / "scores.parquet")
    b = pl.read_parquet(clean / "demo" / "score" / "scores.parquet")
    assert a["id"].n_unique() == a.height == b.height  # no duplicates, nothing lost
    assert a.sort("id").equals(b.sort("id"))
    for s in ("random", "eas"):
        assert (killed / "demo" / "select" / f"{s}.parquet").read_bytes() == \
            (clean / "demo" / "select" / f"{s}.parquet").read_bytes()
