"""The score stage runs either engine by config, and the two agree within the top-K bound."""

import polars as pl
import pytest
from conftest import have_vllm

from undercurve.config import load_settings
from undercurve.ingest import ingest
from undercurve.registry import Registry
from undercurve.run import RunContext
from undercurve.stages import StageResult, score_stage




@pytest.mark.skipif(not have_vllm(), reason=".venv-vllm missing (make setup)")
def test_score_stage_with_torch_and_vllm_engines(tmp_path, tiny_model):
    from undercurve.demo import write_demo_inputs

    corpus, _ = write_demo_inputs(tmp_path / "inputs", size=4, seed=3)
    samples, _ = ingest(str(corpus))
    samples = samples.filter(pl.col("id").str.starts_with("demo")).head(3)
    path = tmp_path / "samples.parquet"
    samples.write_parquet(path)
    prev = StageResult("length_cap", str(path), "parent", samples.height, samples.height)
    out = {}
    for engine in ("torch", "vllm"):
        settings = load_settings("configs/tiny.yaml", {"workdir": str(tmp_path / engine), "scoring.engine": engine,
                                                       "scoring.top_k": 20, "scoring.shard_size": 2})
        reg = Registry(settings.registry_path, create=True)
        ctx = RunContext(settings, reg.start_run("curate", "t", {}, "h"), str(settings.registry_path))
        res = score_stage(ctx, prev, str(tiny_model))
        assert res.rows_out == samples.height and res.extra["engine"] == engine
        out[engine] = pl.read_parquet(res.path).sort("id")
    exact, topk = out["torch"], out["vllm"]
    assert exact["id"].to_list() == topk["id"].to_list()
    gap = (exact["eas"] - topk["eas"]).to_list()
    # truncated entropy never exceeds the exact one, and misses it by at most the bound
    for g, bound in zip(gap, topk["topk_bound"].to_list()):
        assert -1e-3 <= g <= bound + 1e-3
    assert topk["topk_mass_min"].min() > 0
    # per-token entropies: float16 lists as stored, the EAS curve not stored twice, one reader for both engines
    from undercurve.scoring.score import TOKEN_SCHEMA, scan_entropies

    for engine, scores in out.items():
        assert "entropy" not in scores.columns
        score_dir = tmp_path / engine / "demo" / "score"  # tiny.yaml's run_name
        curves = scan_entropies(score_dir).collect().sort("id")
        assert curves["id"].to_list() == scores["id"].to_list()
        assert curves.select(list(TOKEN_SCHEMA)).schema == pl.Schema(TOKEN_SCHEMA)
        assert [len(c) for c in curves["entropy"]] == [T - 1 for T in scores["T"]]
