import multiprocessing as mp

import polars as pl
import pytest

from undercurve.io import RunLocked, plan_shards, run_lock, run_shard
from undercurve.registry import Registry


def run_sharded(df, out_dir, size, fn, settings):
    shards = plan_shards(df, out_dir, size, settings=settings)
    for s in shards:
        run_shard(s, fn)
    return [s.output_path for s in shards]


def test_sharded_resume_skips_finished_shards_and_drops_stale(tmp_path):
    df = pl.DataFrame({"id": [f"s{i}" for i in range(10)], "x": list(range(10))})
    calls, crash = [], [True]

    def fn(shard):
        calls.append(shard["id"][0])
        if shard["id"][0] == "s6" and crash.pop() if crash else False:
            raise RuntimeError("killed")
        return shard.with_columns((pl.col("x") * 2).alias("y"))

    with pytest.raises(RuntimeError):
        run_sharded(df, tmp_path, 3, fn, settings={"k": 1})
    assert sorted(p.name for p in tmp_path.glob("shard-*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    calls.clear()
    paths = run_sharded(df, tmp_path, 3, fn, settings={"k": 1})
    assert calls == ["s6", "s9"]  # finished shards were not recomputed
    out = pl.concat([pl.read_parquet(p) for p in paths])
    assert out["y"].to_list() == [2 * i for i in range(10)]
    calls.clear()
    run_sharded(df, tmp_path, 3, fn, settings={"k": 2})  # other settings: everything reruns
    assert len(calls) == 4
    paths = run_sharded(df.head(4), tmp_path, 3, fn, settings={"k": 2})
    assert len(list(tmp_path.glob("shard-*.parquet"))) == 2 == len(paths)


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
