"""Scale-out on an existing engine: scoring shards as Prefect tasks on 2 Dask worker processes
give the same scores as scoring in the flow process."""

import polars as pl

from conftest import demo_overrides


def test_scoring_shards_on_two_dask_workers(prefect_harness, tmp_path):
    from flows.curate import curate

    common = {"corpus.demo_size": 8, "decontam.enabled": False, "pass_rate.enabled": False,
              "selection.strategies": ["random", "eas"], "scoring.shard_size": 3,
              "model.tiny_dir": str(tmp_path / "models")}
    scores = {}
    for workers in (2, 1):
        workdir = tmp_path / f"w{workers}"
        summary = curate("configs/demo.yaml", demo_overrides(workdir, **common, **{"scoring.workers": workers}))
        assert summary["accounting"]["balanced"]
        scores[workers] = pl.read_parquet(workdir / "demo" / "score" / "scores.parquet").sort("id")
    assert scores[2].height == 10  # 8 problems + the 2 planted leaks (decontamination off)
    assert scores[2].equals(scores[1])
