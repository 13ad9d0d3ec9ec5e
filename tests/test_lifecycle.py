"""Run states tell the truth, children die with their parent, reuse is verified.

Real processes: the `undercurve run` CLI killed with SIGKILL or SIGTERM mid-stage, a real
DuckDB registry, real shard files truncated on disk."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows.cli import main
from undercurve.registry import Registry

REPO = Path(__file__).resolve().parent.parent


def _start(workdir: Path, *sets: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "flows.cli", "run", "configs/tiny.yaml", "--flow", "curate",
           "--set", f"workdir={workdir}", "--set", "corpus.demo_size=12", "--set", "decontam.enabled=false",
           "--set", "selection.budget=4", "--set", "pass_rate.max_tokens=16"]
    for s in sets:
        cmd += ["--set", s]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own temporary server
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_child(proc: subprocess.Popen, needle: str, timeout: float = 300) -> list[psutil.Process]:
    """Wait until a descendant whose command line contains ``needle`` runs; return all descendants."""
    parent = psutil.Process(proc.pid)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended before {needle!r} started:\n{proc.stdout.read()[-3000:]}"
        kids = parent.children(recursive=True)
        if any(needle in " ".join(k.cmdline()) for k in kids if k.is_running()):
            return kids
        time.sleep(0.2)
    raise AssertionError(f"no {needle!r} child within {timeout}s")


def _survivors(kids: list[psutil.Process], wait_s: float = 15) -> list[str]:
    deadline = time.time() + wait_s
    while time.time() < deadline:
        alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.3)
    return [" ".join(k.cmdline())[:120] for k in alive]


def _status(workdir: Path) -> tuple[str, str]:
    assert main(["runs", "--registry", str(workdir / "registry.duckdb")]) == 0  # reaps dead owners
    run = Registry(workdir / "registry.duckdb").query("SELECT status, reason FROM runs")
    assert run.height == 1
    return run["status"][0], run["reason"][0]


def test_sigkill_mid_stage_leaves_no_child_and_the_run_is_crashed(tmp_path):
    proc = _start(tmp_path)
    kids = _wait_for_child(proc, "undercurve.vllm_worker")  # the pass-rate rollouts, mid-stage
    assert any("uvicorn" in " ".join(k.cmdline()) for k in kids)  # and the temporary Prefect server
    os.kill(proc.pid, signal.SIGKILL)  # the parent only: its children are not signalled
    proc.wait()
    assert _survivors(kids) == []
    status, reason = _status(tmp_path)
    assert status == "CRASHED" and str(proc.pid) in reason


def test_sigterm_cancels_the_run_and_stops_its_children(tmp_path):
    proc = _start(tmp_path)
    kids = _wait_for_child(proc, "undercurve.vllm_worker")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    assert "cancelled" in out
    assert _survivors(kids) == []
    assert _status(tmp_path) == ("CANCELLED", "Cancelled: received signal SIGTERM")


def test_a_failing_run_is_failed_with_its_reason(tmp_path):
    (tmp_path / "boom.py").write_text(
        "from undercurve.strategies import Strategy\n"
        "class Boom(Strategy):\n"
        "    name = 'boom'\n"
        "    def score(self, df):\n"
        "        raise RuntimeError('the boom strategy always fails')\n")
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env_path]))
    try:
        proc = _start(tmp_path / "w", "pass_rate.enabled=false", "selection.strategies=[random, 'boom:Boom']")
        out, _ = proc.communicate(timeout=300)
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert proc.returncode == 1, out[-2000:]
    assert "run failed" in out and "the boom strategy always fails" in out
    status, reason = _status(tmp_path / "w")
    assert status == "FAILED" and "the boom strategy always fails" in reason


def test_reap_marks_only_runs_whose_owner_is_gone(tmp_path):
    reg = Registry(tmp_path / "r.duckdb", create=True)
    mine = reg.start_run("curate", "alive", {}, "h")  # this process: alive
    dead = subprocess.run([sys.executable, "-c", "import sys; from undercurve.registry import Registry; "
                           "print(Registry(sys.argv[1]).start_run('curate', 'dead', {}, 'h'))", str(reg.path)],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert reg.reap_crashed() == [dead]
    states = dict(reg.query("SELECT run_id, status FROM runs").iter_rows())
    assert states == {mine: "RUNNING", dead: "CRASHED"}
    reg.finish_run(mine, "COMPLETED")


def test_a_deleted_registry_is_never_recreated(tmp_path):
    from undercurve.registry import RegistryMissing
    from undercurve.run import RunContext

    reg = Registry(tmp_path / "r.duckdb", create=True)
    ctx = RunContext(None, reg.start_run("curate", "x", {}, "h"), str(reg.path))
    reg.path.unlink()
    with pytest.raises(RegistryMissing):
        ctx.registry.add_artifact(ctx.run_id, "ingest", "samples", reg.path, 0)
    assert not reg.path.exists()
    assert main(["runs", "--registry", str(reg.path)]) == 1 and not reg.path.exists()
