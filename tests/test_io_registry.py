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


def test_a_batch_lands_whole_at_its_end_and_never_holds_the_file_meanwhile(tmp_path):
    """A stage's writes (artifact, lineage, set-aside counts) land together or not at all;
    another Registry object on the same file, in the same thread, joins the batch; while the
    block runs (hashing outputs, say) other threads use the file freely and see none of it."""
    import threading

    import duckdb
    import polars as pl

    path = tmp_path / "r.duckdb"
    reg = Registry(path, create=True)
    a = tmp_path / "a.txt"
    a.write_text("x")
    run = reg.start_run("curate", "t", {}, "h")

    def count(table: str) -> int:
        return reg.query(f"SELECT count(*) AS n FROM {table}")["n"][0]

    with pytest.raises(RuntimeError, match="mid-stage"):  # the block fails: nothing lands
        with reg.batch():
            reg.add_artifact(run, "ingest", "samples", a, 1)
            Registry(path).add_set_aside(run, "ingest", pl.DataFrame({"reason": ["bad line"]}))
            raise RuntimeError("killed mid-stage")
    assert count("artifacts") == 0 and count("set_aside") == 0

    with pytest.raises(duckdb.Error):  # a write fails while the batch is applied: nothing lands
        with reg.batch():
            reg.add_artifact(run, "ingest", "samples", a, 1)
            reg._insert("set_aside", pl.DataFrame({"no_such_column": [1]}))
    assert count("artifacts") == 0

    seen = []
    with reg.batch():
        aid = Registry(path).add_artifact(run, "ingest", "samples", a, 1)
        other = threading.Thread(target=lambda: seen.append(
            (Registry(path).heartbeat(run), count("artifacts"))))
        other.start()
        other.join(30)
        assert not other.is_alive()  # not blocked by the open batch
        reg.add_artifact(run, "select", "selection", a, 1, parents=[aid])
    assert seen == [(None, 0)]  # it saw none of the batch
    assert count("artifacts") == 2
    assert reg.query("SELECT parent_id FROM lineage")["parent_id"].to_list() == [aid]
