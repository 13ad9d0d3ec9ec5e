"""Scale-out on an existing engine: both model stages' shards (scoring, rollouts) as Prefect
tasks on 2 Dask worker processes give the same results as in the flow process, and really ran
in those workers."""

import os

import polars as pl

from conftest import demo_overrides
from undercurve.registry import Registry


def test_model_stage_shards_on_two_dask_workers(prefect_harness, tmp_path):
    from flows.curate import curate

    common = {"corpus.demo_size": 8, "decontam.enabled": False, "selection.strategies": ["random", "eas", "pass_rate"],
              "scoring.shard_size": 3, "pass_rate.engine": "hf", "pass_rate.rollouts": 2,
              "pass_rate.max_tokens": 6, "pass_rate.shard_size": 5, "model.tiny_dir": str(tmp_path / "models")}
    scores, rates, rollouts, shard_runs = {}, {}, {}, {}
    for workers in (2, 1):
        workdir = tmp_path / f"w{workers}"
        summary = curate("configs/tiny.yaml", demo_overrides(workdir, **common, **{"scoring.workers": workers}))
        run = workdir / "demo"
        scores[workers] = pl.read_parquet(run / "score" / "scores.parquet").sort("id")
        rates[workers] = pl.read_parquet(run / "pass_rate" / "pass_rates.parquet").sort("id")
        rollouts[workers] = pl.read_parquet(run / "pass_rate" / "rollouts.parquet").sort("id", "rollout")
        shard_runs[workers] = Registry(workdir / "registry.duckdb").query(
            "SELECT stage, shard, worker, skipped FROM shard_runs WHERE run_id = ?", [summary["run_id"]])
    assert scores[2].height == 10  # 8 problems + the 2 planted leaks (decontamination off)
    _same_scores(scores[2], scores[1])
    # rollouts: one worker job per shard on the cluster, one job for all shards in process; the
    # same text either way (every sample draws from generators seeded by its id)
    assert rates[2].height == 10 and rates[2]["n"].to_list() == [2] * 10
    assert rates[2].equals(rates[1]) and rollouts[2].equals(rollouts[1])
    me = f":{os.getpid()}"
    for stage, n_shards in (("score", 4), ("pass_rate", 2)):  # 10 rows / 3, 10 rows / 5
        on_cluster = shard_runs[2].filter(pl.col("stage") == stage)
        assert sorted(on_cluster["shard"].to_list()) == list(range(n_shards)) and not any(on_cluster["skipped"])
        # every shard ran in a Dask worker process, on loopback by default
        assert all(" dask=tcp://127.0.0.1:" in w and me + " " not in w for w in on_cluster["worker"])
    in_process = shard_runs[1]
    assert in_process["stage"].to_list() == ["score"] * 4  # rollouts in process: one job, not shards
    assert all(w.endswith(me) for w in in_process["worker"])


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
