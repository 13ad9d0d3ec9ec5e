"""The transformers sampling backend (undercurve.hf_sampling) and the worker job that runs it.

Its contract is vLLM's: a sample depends on its prompt, its seed and its index, not on the
other prompts of its batch; temperature 0 is greedy decoding; a stop token ends a sample."""

from __future__ import annotations

import sys

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from undercurve.hf_sampling import sample
from undercurve.scoring.trajectory import prompt_token_ids
from undercurve.vllm_runtime import run_vllm_job

PROMPTS = ["Tom has 3 apples and buys 4 more. How many apples does Tom have?",
           "A train travels 60 km per hour for 2 hours. How far does it go?",
           "Let x = 12. Then 2x - 5 = ?"]


@pytest.fixture(scope="module")
def lm(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return model, tok, [prompt_token_ids(tok, p) for p in PROMPTS]


def _run(model, tok, prompts, seeds, **kw):
    args = {"n": 3, "temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "stop_ids": set(), "pad_id": 0} | kw
    return sample(model, prompts, seeds, **args)


def test_a_sample_does_not_depend_on_its_batch(lm):
    model, tok, prompts = lm
    together = _run(model, tok, prompts, [5, 6, 7], batch_size=9)
    alone = _run(model, tok, prompts[1:2], [6], batch_size=2)
    assert [s.token_ids for s in alone[0]] == [s.token_ids for s in together[1]]
    # and the samples of one prompt differ from each other (their own generators)
    assert len({tuple(s.token_ids) for s in together[1]}) > 1


def test_temperature_zero_is_greedy_decoding(lm):
    model, tok, prompts = lm
    ours = _run(model, tok, prompts, [0, 1, 2], n=1, temperature=0.0, max_tokens=10)
    for p, got in zip(prompts, ours):
        ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             do_sample=False, max_new_tokens=10, min_new_tokens=10, pad_token_id=0)
        assert got[0].token_ids == ref[0, len(p):].tolist()


def test_a_stop_token_ends_the_sample_and_is_not_kept(lm):
    model, tok, prompts = lm
    free = _run(model, tok, prompts[:1], [3], n=1, temperature=0.0, max_tokens=10)[0][0]
    assert free.finish_reason == "length" and len(free.token_ids) == 10
    stop = free.token_ids[4]
    cut = _run(model, tok, prompts[:1], [3], n=1, temperature=0.0, max_tokens=10, stop_ids={stop})[0][0]
    assert cut.finish_reason == "stop"
    assert cut.token_ids == free.token_ids[: free.token_ids.index(stop)]


def test_finished_sequences_leave_the_batch_without_disturbing_the_others(lm):
    """A sequence that stops early is dropped from the batch and its KV cache; the others must
    continue exactly as if each had run alone."""
    model, tok, prompts = lm
    free = _run(model, tok, prompts, [0, 1, 2], n=1, temperature=0.0, max_tokens=10)
    stop = free[0][0].token_ids[2]  # the first prompt stops after 3 tokens
    batch = _run(model, tok, prompts, [0, 1, 2], n=1, temperature=0.0, max_tokens=10, stop_ids={stop}, batch_size=3)
    alone = [_run(model, tok, [p], [seed], n=1, temperature=0.0, max_tokens=10, stop_ids={stop}, batch_size=1)[0]
             for p, seed in zip(prompts, [0, 1, 2])]
    assert [[s.token_ids for s in ss] for ss in batch] == [[s.token_ids for s in ss] for ss in alone]
    lengths = {len(s.token_ids) for ss in batch for s in ss}
    assert len(lengths) > 1 and min(lengths) < 10  # someone really left the batch early


def test_worker_rollouts_on_the_hf_backend(tiny_model, tmp_path):
    """The same job and outputs as vLLM's rollouts; a rerun reuses them; another backend does not."""
    rows = [{"id": f"q{i}", "prompt": p, "answer": "7"} for i, p in enumerate(PROMPTS)]
    pl.DataFrame(rows).write_parquet(tmp_path / "in.parquet")
    step = {"kind": "rollouts", "name": "r", "input": str(tmp_path / "in.parquet"), "output": str(tmp_path / "ro.parquet"),
            "pass_rate_output": str(tmp_path / "pr.parquet"), "n": 2, "max_tokens": 8, "temperature": 1.0}
    job = {"model": str(tiny_model), "engine": {"backend": "hf"}, "steps": [step]}
    first = run_vllm_job(job, tmp_path, name="hf", python=sys.executable)
    assert first["steps"][0]["skipped"] is False
    ro, pr = pl.read_parquet(step["output"]), pl.read_parquet(step["pass_rate_output"])
    assert ro.height == 6 and set(ro["rollout"]) == {0, 1}
    assert pr.sort("id")["n"].to_list() == [2, 2, 2]
    assert pr["pass_rate"].to_list() == (pr["n_correct"] / pr["n"]).to_list()
    again = run_vllm_job(job, tmp_path, name="hf", python=sys.executable)
    assert again["steps"][0]["skipped"] is True


def test_nucleus_matches_a_full_sort_reference():
    """Every sampled token lies in the nucleus a full sort gives (smallest top set with mass
    >= top_p), both when it sits in the top 256 and when a flat row needs the whole sort."""
    from undercurve.hf_sampling import _pick

    torch.manual_seed(0)
    V, top_p = 5000, 0.9
    logits = torch.cat([torch.randn(4, V) * 6, torch.randn(4, V) * 0.1])  # peaked rows, flat rows
    probs = torch.softmax(logits.double(), -1)
    nuclei = []
    for row in probs:
        p, idx = row.sort(descending=True)
        nuclei.append(set(idx[: int((p.cumsum(0) < top_p).sum()) + 1].tolist()))
    assert min(map(len, nuclei[4:])) > 256 and max(map(len, nuclei[:4])) < 256  # both paths
    gens = [torch.Generator().manual_seed(i) for i in range(8)]
    seen = [set() for _ in range(8)]
    for _ in range(200):
        for row, tok in enumerate(_pick(logits, 1.0, top_p, gens).tolist()):
            assert tok in nuclei[row]
            seen[row].add(tok)
    assert all(len(s) > 1 for s in seen)
