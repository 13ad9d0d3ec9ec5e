import multiprocessing as mp

import pytest

from undercurve.io import RunLocked, run_lock
from undercurve.registry import Registry


def _writer(path, worker, n):
    reg = Registry(path)
    for i in range(n):
        run_id = reg.start_run("curate", f"w{worker}", {"i": i}, "h")
        reg.finish_run(run_id, "COMPLETED", {"i": i})


def test_concurrent_processes_never_lose_registry_writes(tmp_path):
    path = tmp_path / "reg.duckdb"
    Registry(path, create=True)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    runs = Registry(path).query("SELECT run_name, status FROM runs")
    assert runs.height == 45
    assert set(runs["status"]) == {"COMPLETED"}


def test_artifacts_hash_and_lineage(tmp_path):
    reg = Registry(tmp_path / "r.duckdb", create=True)
    a = tmp_path / "a.txt"
    a.write_text("hello")
    run = reg.start_run("curate", "t", {}, "h")
    pa = reg.add_artifact(run, "ingest", "samples", a, 1)
    pb = reg.add_artifact(run, "select", "selection", a, 1, parents=[pa])
    row = reg.query("SELECT sha256, rows FROM artifacts WHERE artifact_id = ?", [pa]).row(0)
    assert row == ("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", 1)
    assert reg.query("SELECT parent_id FROM lineage WHERE child_id = ?", [pb])["parent_id"].to_list() == [pa]


def test_run_lock_is_exclusive(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunLocked):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released
        pass


def test_a_batch_is_one_transaction_shared_by_this_thread_only(tmp_path):
    """A stage's writes (artifact, lineage, set-aside counts) land together or not at all;
    another Registry object on the same file, in the same thread, joins the batch instead of
    waiting for it (no deadlock); another thread waits for the commit."""
    import threading

    import polars as pl

    path = tmp_path / "r.duckdb"
    reg = Registry(path, create=True)
    a = tmp_path / "a.txt"
    a.write_text("x")
    run = reg.start_run("curate", "t", {}, "h")
    with pytest.raises(RuntimeError, match="mid-stage"):
        with reg.batch():
            reg.add_artifact(run, "ingest", "samples", a, 1)
            Registry(path).add_set_aside(run, "ingest", pl.DataFrame({"reason": ["bad line"]}))
            raise RuntimeError("killed mid-stage")
    assert reg.query("SELECT count(*) AS n FROM artifacts")["n"][0] == 0
    assert reg.query("SELECT count(*) AS n FROM set_aside")["n"][0] == 0

    seen = []
    with reg.batch():
        aid = Registry(path).add_artifact(run, "ingest", "samples", a, 1)
        other = threading.Thread(target=lambda: seen.append(
            Registry(path).query("SELECT count(*) AS n FROM artifacts")["n"][0]))
        other.start()
        other.join(0.5)
        assert other.is_alive()  # blocked until the batch commits
        reg.add_artifact(run, "select", "selection", a, 1, parents=[aid])
    other.join(30)
    assert seen == [2]
    assert reg.query("SELECT parent_id FROM lineage")["parent_id"].to_list() == [aid]
