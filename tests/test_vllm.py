"""The vLLM side: one job (one engine) runs rollouts + plain/probe top-K scoring, checked
against the exact torch engine in this environment.

The session's tiny model is so peaked that top-20 keeps all the mass; a copy with the final
norm scaled by 0.45 keeps 99.4-99.9% of the mass in the top 20 (the paper's regime), so the
truncation and its bound really are exercised.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import polars as pl
import pytest
from conftest import have_vllm

from undercurve.answers import is_equivalent
from undercurve.vllm_runtime import VllmEnvironmentMissing, run_vllm_job, vllm_python

K = 20
SAMPLES = [
    {"id": "a", "source": "t", "prompt": "Tom has 3 apples and buys 4 more. How many apples does Tom have?",
     "response": "<think>3 + 4 = 7. So the answer is 7.</think> Tom has 3 + 4 = 7 apples. \\boxed{7}", "answer": "7"},
    {"id": "b", "source": "t", "prompt": "A train travels 60 km per hour for 2 hours. How far does it go?",
     "response": "<think>60 * 2 = 120</think> The train goes 120 km. The answer is \\boxed{120}. Done.",
     "answer": "120"},
    {"id": "c", "source": "t", "prompt": "Let x = 12.", "response": "So \\boxed{19}", "answer": "19"},
    {"id": "x", "source": "t", "prompt": "Say hi.", "response": "hi", "answer": "hi"},  # no \boxed{}: set aside
]




needs_vllm = pytest.mark.skipif(not have_vllm(), reason="no .venv-vllm (run `make setup`) and no $UNDERCURVE_VLLM_PYTHON")


@pytest.fixture(scope="session")
def warm_model(tiny_model, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("models") / "tiny-warm"
    shutil.copytree(tiny_model, out)
    weights = out / "model.safetensors"
    state = load_file(weights)
    state["model.norm.weight"] = state["model.norm.weight"] * 0.45
    save_file(state, weights, metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def vllm_job(warm_model, tmp_path_factory):
    """ONE vLLM job for the whole session: rollouts, plain + probe top-K, both full vocab."""
    if not have_vllm():
        pytest.skip("no .venv-vllm (run `make setup`) and no $UNDERCURVE_VLLM_PYTHON")
    d = tmp_path_factory.mktemp("vllm")
    pl.DataFrame(SAMPLES).write_parquet(d / "samples.parquet")
    pl.DataFrame(SAMPLES[:1]).write_parquet(d / "one.parquet")  # T=36: crosses cache blocks
    job = {
        "model": str(warm_model),
        "engine": {"dtype": "float32", "seed": 0, "block_size": 32},  # small blocks: probes hit the prefix cache
        "steps": [
            {"kind": "rollouts", "input": str(d / "samples.parquet"), "output": str(d / "rollouts.parquet"),
             "n": 3, "max_tokens": 16, "temperature": 1.0},
            {"kind": "score", "input": str(d / "samples.parquet"), "output": str(d / "plain.parquet"),
             "set_aside_output": str(d / "plain_aside.parquet"), "mode": "plain", "top_k": K},
            {"kind": "score", "input": str(d / "samples.parquet"), "output": str(d / "probe.parquet"),
             "set_aside_output": str(d / "probe_aside.parquet"), "mode": "probe", "top_k": K,
             "answer_prefix_tokens": 1, "probe_batch": 16},
            {"kind": "score", "input": str(d / "one.parquet"), "output": str(d / "full.parquet"),
             "set_aside_output": str(d / "full_aside.parquet"), "mode": "plain", "top_k": -1},
            {"kind": "score", "input": str(d / "one.parquet"), "output": str(d / "full_probe.parquet"),
             "set_aside_output": str(d / "full_probe_aside.parquet"), "mode": "probe", "top_k": -1,
             "answer_prefix_tokens": 1},
        ],
    }
    result = run_vllm_job(job, d / "work")
    return {"dir": d, "job": job, "result": result}


@pytest.fixture(scope="session")
def torch_rows(warm_model):
    """Exact full-vocabulary rows from the torch engine, keyed by (mode, id)."""
    from undercurve.scoring.score import score_frame

    df = pl.DataFrame(SAMPLES)
    plain, _ = score_frame(df, {"model": str(warm_model), "mode": "plain", "device": "cpu", "dtype": "float32"})
    probe, _ = score_frame(df, {"model": str(warm_model), "mode": "probe", "answer_prefix_tokens": 1,
                                "device": "cpu", "dtype": "float32"})
    return {(r["mode"], r["id"]): r for r in plain.to_dicts() + probe.to_dicts()}


def _with_curve(shard: pl.DataFrame) -> pl.DataFrame:
    """A worker's shard file holds the engine's float32 lists (the cache stores them narrower):
    the curve EAS integrates is plain_entropy[:T-1] (plain) or the last suffix column (probe)."""
    plain, suffix = pl.col("plain_entropy"), pl.col("suffix_entropy")
    return shard.with_columns(pl.when(suffix.is_null()).then(plain.list.slice(0, plain.list.len() - 1))
                              .otherwise(suffix.list.eval(pl.element().list.last())).alias("entropy"))


@needs_vllm
def test_rollouts_and_pass_rate(vllm_job):
    d = vllm_job["dir"]
    ro = pl.read_parquet(d / "rollouts.parquet")
    rates = pl.read_parquet(d / "pass_rate.parquet")
    assert ro.columns[:6] == ["id", "rollout", "text", "extracted", "correct", "finish_reason"]
    assert ro.group_by("id").len()["len"].to_list() == [3] * len(SAMPLES)
    answers = {s["id"]: s["answer"] for s in SAMPLES}
    recomputed = [is_equivalent(e, answers[i]) for i, e in zip(ro["id"], ro["extracted"])]
    assert ro["correct"].to_list() == recomputed
    assert set(ro["finish_reason"]) <= {"length", "stop"}
    for r in rates.iter_rows(named=True):
        n_correct = sum(c for i, c in zip(ro["id"], recomputed) if i == r["id"])
        assert (r["n"], r["n_correct"]) == (3, n_correct)
        assert r["pass_rate"] == pytest.approx(n_correct / 3)


@needs_vllm
@pytest.mark.parametrize("mode", ["plain", "probe"])
def test_topk_within_truncation_bound(vllm_job, torch_rows, mode):
    d = vllm_job["dir"]
    rows = _with_curve(pl.read_parquet(d / f"{mode}.parquet")).to_dicts()
    aside = pl.read_parquet(d / f"{mode}_aside.parquet")
    assert [r["id"] for r in rows] == ["a", "b", "c"] and aside["id"].to_list() == ["x"]
    truncated_somewhere = False
    for r in rows:
        exact = torch_rows[(mode, r["id"])]
        assert (r["T"], r["response_tokens"]) == (exact["T"], exact["response_tokens"])
        assert 0 < r["topk_mass_min"] <= r["topk_mass_mean"] <= 1 + 1e-6
        H, H_exact = np.array(r["entropy"]), np.array(exact["entropy"])
        assert H.shape == H_exact.shape == (r["T"] - 1,)
        # truncated entropy never exceeds the exact one; the gap is within the summed bound
        assert np.all(H <= H_exact + 1e-4)
        assert r["eas"] <= exact["eas"] + 1e-3
        assert exact["eas"] - r["eas"] <= r["topk_bound"] + 1e-3
        assert r["ppl"] == pytest.approx(exact["ppl"], rel=1e-3)  # scored-token log-probs are exact
        truncated_somewhere |= r["topk_mass_min"] < 0.999
    assert truncated_somewhere, "test model too peaked: top-K truncation never exercised"
    if mode == "probe":
        assert all(len(s) == 1 for r in rows for s in r["suffix_entropy"])  # only the last suffix column


@needs_vllm
@pytest.mark.parametrize("mode", ["plain", "probe"])
def test_full_vocab_matches_exact(vllm_job, torch_rows, mode):
    (r,) = _with_curve(pl.read_parquet(vllm_job["dir"] / ("full.parquet" if mode == "plain" else "full_probe.parquet"))
                       ).to_dicts()
    exact = torch_rows[(mode, r["id"])]
    np.testing.assert_allclose(r["entropy"], exact["entropy"], atol=1e-4)  # per position: same t indexing
    np.testing.assert_allclose(r["plain_entropy"], exact["plain_entropy"], atol=1e-4)
    assert r["topk_mass_min"] == pytest.approx(1.0, abs=1e-5) and r["topk_bound"] == 0.0


@needs_vllm
def test_rerun_skips_every_step(vllm_job, tmp_path):
    result = run_vllm_job(vllm_job["job"], tmp_path)
    assert [s["skipped"] for s in result["steps"]] == [True] * 5
    assert result["vocab_size"] is None  # no engine was built


def test_failing_job_raises_with_log_path(tmp_path, monkeypatch):
    # this interpreter is enough: the worker fails on the missing input before importing vllm
    monkeypatch.setenv("UNDERCURVE_VLLM_PYTHON", sys.executable)
    job = {"model": "nowhere", "steps": [{"kind": "score", "input": str(tmp_path / "missing.parquet"),
                                          "output": str(tmp_path / "out.parquet")}]}
    with pytest.raises(RuntimeError) as err:
        run_vllm_job(job, tmp_path, name="bad")
    msg = str(err.value)
    assert str(tmp_path / "bad.log") in msg and "missing.parquet" in msg
    assert (tmp_path / "bad.log").exists()


def test_missing_interpreter_says_make_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("UNDERCURVE_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(VllmEnvironmentMissing, match="make setup"):
        vllm_python()
