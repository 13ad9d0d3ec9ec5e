"""Scale-out on an existing engine: scoring shards as Prefect tasks on 2 Dask worker processes
give the same scores as scoring in the flow process, and really ran in those workers."""

import os

import polars as pl

from conftest import demo_overrides
from undercurve.registry import Registry


def test_scoring_shards_on_two_dask_workers(prefect_harness, tmp_path):
    from flows.curate import curate

    common = {"corpus.demo_size": 8, "decontam.enabled": False, "pass_rate.enabled": False,
              "selection.strategies": ["random", "eas"], "scoring.shard_size": 3,
              "model.tiny_dir": str(tmp_path / "models")}
    scores, workers_seen = {}, {}
    for workers in (2, 1):
        workdir = tmp_path / f"w{workers}"
        summary = curate("configs/tiny.yaml", demo_overrides(workdir, **common, **{"scoring.workers": workers}))
        scores[workers] = pl.read_parquet(workdir / "demo" / "score" / "scores.parquet").sort("id")
        runs = Registry(workdir / "registry.duckdb").query(
            "SELECT shard, worker, skipped FROM shard_runs WHERE run_id = ?", [summary["run_id"]])
        assert sorted(runs["shard"].to_list()) == [0, 1, 2, 3] and not any(runs["skipped"])  # 10 rows / 3
        workers_seen[workers] = runs["worker"].to_list()
    assert scores[2].height == 10  # 8 problems + the 2 planted leaks (decontamination off)
    _same_scores(scores[2], scores[1])
    me = f":{os.getpid()}"
    # in-process: every shard in this process; Dask: every shard in a Dask worker process
    assert all(w.endswith(me) for w in workers_seen[1])
    assert all(" dask=" in w and me + " " not in w for w in workers_seen[2])
    assert all(" dask=tcp://127.0.0.1:" in w for w in workers_seen[2])  # loopback by default


def _same_scores(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Equal up to fp32 summation order, which a worker's thread count changes (SPEC section
    4: 1e-4 bits per position, so n x 1e-4 for a sum of n; log PPL like an entropy)."""
    floats = {c for c, t in a.schema.items() if t.is_float()}
    assert a.drop(floats).equals(b.drop(floats))
    nulls = [pl.col(c).is_null() | pl.col(c).is_nan() for c in sorted(floats)]
    assert a.select(nulls).equals(b.select(nulls))
    both = a.join(b, on="id", suffix="_b")
    tol = {"eas": pl.col("T") * 1e-4, "ppl": pl.col("ppl") * 1e-4}
    for c in floats:
        bound = tol.get(c, pl.lit(1e-4))
        bad = both.filter((pl.col(c) - pl.col(f"{c}_b")).abs() > bound)
        assert bad.is_empty(), (c, bad.select("id", c, f"{c}_b"))
