"""The batched torch engine against a slow, obvious reference.

Reference: for every t build the probe context C_t = prompt + x_1..x_t + suffix explicitly,
run one plain HF forward pass (eager attention, no cache, no mask), softmax over the full
vocabulary in float64, entropy in bits.

Tolerances (SPEC section 4): the engine computes in fp32, and a different batching, chunking
or CPU changes the summation order, which moves an entropy of a few bits over V terms by
~1e-5 bits. So every per-position entropy is compared at ATOL = 1e-4 bits, every sum of n
positions at n * ATOL, every mean at ATOL. A real indexing, masking or position error moves
entropies by > 0.05 bits (asserted below), so these bounds still catch it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import polars as pl
import pytest
import torch

from undercurve.scoring.score import SCORE_SCHEMA, score_frame
from undercurve.scoring.torch_engine import TorchScorer
from undercurve.scoring.trajectory import build_trajectory

ATOL = 1e-4  # bits per position, fp32 vs float64 reference (see the module docstring)

SAMPLES = [
    {"id": "a", "prompt": "Tom has 3 apples and buys 4 more. How many apples does Tom have?",
     "response": "<think>3 + 4 = 7. So the answer is 7.</think> Tom has 3 + 4 = 7 apples. \\boxed{7}", "answer": "7"},
    {"id": "b", "prompt": "A train travels 60 km per hour for 2 hours. How far does it go?",
     "response": "<think>60 * 2 = 120</think> The train goes 120 km. The answer is \\boxed{120}. Done.",
     "answer": "120"},
    {"id": "c", "prompt": "Compute \\frac{1}{2} + \\frac{1}{3}.",
     "response": "So \\boxed{\\frac{5}{6}} #### 42", "answer": "\\frac{5}{6}"},
    {"id": "d", "prompt": "Let x = 12.",
     "response": "Then 2x - 5 = 19, and 19 is odd, so the answer is \\boxed{19}.", "answer": "19"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls run faster on one thread, especially on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tiny_model, tokenizer):
    """(engine model, reference model) pairs with identical weights.

    The reference uses eager attention, so it shares no attention code path with the engine.
    """
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tiny = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    # The fixture ties a wide (std 0.5) head to the embeddings, so it predicts its input token
    # with p ~ 1 and every entropy is ~1e-8 bits: a comparison there would prove nothing.
    # Give this copy its own head with entropies of a few bits, and scale up the layers so the
    # context (hence a masking or position error) visibly moves the probe entropies.
    torch.manual_seed(0)
    tiny.lm_head.weight = torch.nn.Parameter(torch.randn_like(tiny.lm_head.weight) * 0.3)
    with torch.no_grad():
        for name, w in tiny.model.layers.named_parameters():
            if name.endswith("proj.weight"):
                w.mul_(10.0)
    tiny_ref = copy.deepcopy(tiny)
    tiny_ref.set_attn_implementation("eager")
    # deeper, GQA (4 query heads on 2 KV heads), untied head: exercises the cache on every layer
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                      tie_word_embeddings=False, rope_theta=100.0, initializer_range=0.2)
    torch.manual_seed(1)
    gqa = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        gqa.lm_head.weight.normal_(0.0, 0.4)
    cfg.attn_implementation = "eager"
    gqa_ref = Qwen2ForCausalLM(cfg)
    gqa_ref.load_state_dict(gqa.state_dict())
    return {"tiny": (tiny, tiny_ref.eval()), "gqa": (gqa, gqa_ref.eval())}


def _entropy_bits(logits: torch.Tensor) -> np.ndarray:
    z = logits.double().numpy()
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log2(np.where(p > 0, p, 1.0))).sum(-1)  # 0 log 0 = 0


@torch.no_grad()
def reference(model, traj):
    """Slow and obvious: one forward pass per probe context, one for the plain response."""
    m = len(traj.suffix_ids)
    suffix_H = []
    for t in range(1, traj.T):
        ids = torch.tensor([traj.prompt_ids + traj.response_ids[:t] + traj.suffix_ids])
        suffix_H.append(_entropy_bits(model(ids).logits[0, -m:]))
    ids = traj.prompt_ids + traj.response_ids
    logits = model(torch.tensor([ids])).logits[0].double()
    P = traj.P
    plain_H = _entropy_bits(logits[P : P + traj.T])  # row P+t-1 -> H_t
    logp = torch.log_softmax(logits[P - 1 : -1], -1)
    lp = logp.gather(1, torch.tensor(ids[P:])[:, None]).squeeze(1).numpy()
    return np.array(suffix_H), plain_H, float(np.exp(-lp.mean()))


def _trajs(tokenizer, k):
    trajs = [build_trajectory(s, tokenizer, answer_prefix_tokens=k) for s in SAMPLES]
    assert all(not isinstance(t, str) for t in trajs), trajs
    return trajs


@pytest.mark.parametrize("which", ["tiny", "gqa"])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_probe_and_plain_match_reference(models, tokenizer, which, k):
    model, ref_model = models[which]
    trajs = _trajs(tokenizer, k)
    # chunks of 3 probe positions and 4 head rows force chunk boundaries everywhere;
    # batch_tokens=150 splits the 4 samples into ragged batches of different widths
    scorer = TorchScorer(model, device="cpu", chunk_positions=4, probe_chunk=3, batch_tokens=150)
    assert len(scorer._batches(trajs)) >= 2 and any(len(b) > 1 for b in scorer._batches(trajs))
    probe = scorer.score(trajs, mode="probe")
    plain = scorer.score(trajs, mode="plain")
    for traj, row, prow in zip(trajs, probe, plain):
        assert row["id"] == traj.id and prow["id"] == traj.id
        ref_suffix, ref_plain, ref_ppl = reference(ref_model, traj)
        got = np.array(row["suffix_entropy"])
        assert got.shape == (traj.T - 1, len(traj.suffix_ids))
        n = traj.T - 1
        np.testing.assert_allclose(got, ref_suffix, atol=ATOL, rtol=0)
        np.testing.assert_allclose(row["entropy"], ref_suffix[:, -1], atol=ATOL, rtol=0)
        assert row["eas"] == pytest.approx(ref_suffix[:, -1].sum(), abs=n * ATOL)
        assert row["mean_eas"] == pytest.approx(ref_suffix[:, -1].mean(), abs=ATOL)
        for r in (row, prow):
            np.testing.assert_allclose(r["plain_entropy"], ref_plain, atol=ATOL, rtol=0)
            # log PPL is a mean of fp32 log-probs (nats, magnitude < 10): 1e-4 like an entropy
            assert math.log(r["ppl"]) == pytest.approx(math.log(ref_ppl), abs=ATOL)
            assert (r["T"], r["response_tokens"]) == (traj.T, len(traj.response_ids))
        # plain mode: EAS over the response's own next-token entropies, no suffix
        assert prow["suffix_entropy"] is None
        np.testing.assert_allclose(prow["entropy"], ref_plain[:-1], atol=ATOL, rtol=0)
        assert prow["eas"] == pytest.approx(ref_plain[:-1].sum(), abs=n * ATOL)
        # the probe really changes the distribution (else the comparison would prove little)
        assert np.abs(ref_suffix[:, -1] - ref_plain[:-1]).max() > 0.05
        assert np.ptp(ref_suffix[:, -1]) > 0.5


@torch.no_grad()
def reference_signals(model, traj, k, option_ids):
    """Slow and obvious, float64: the distributions x_1..x_R were drawn from (one plain pass),
    and the option probabilities after "\\boxed{" in every probe context (one pass per t)."""
    ids = traj.prompt_ids + traj.response_ids
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, traj.P - 1 : -1].double(), -1)  # [R, V]
    p = logp.exp()
    V = p.shape[-1]
    H = -(p * logp).sum(-1) / math.log(2)
    kl = (torch.log(torch.tensor(1.0 / V, dtype=torch.float64)) - logp).mean(-1)  # sum_v (1/V) log((1/V) / p_v)
    pk = p.sort(-1, descending=True).values[:, :k]
    lost = H + (pk * pk.log2()).sum(-1)
    options = []
    for t in range(1, traj.T):
        logits = model(torch.tensor([traj.prompt_ids + traj.response_ids[:t] + traj.suffix_ids])).logits[0, -1]
        options.append(torch.softmax(logits.double(), -1)[option_ids].numpy())
    return {"mean_entropy": float(H.mean()), "self_certainty": float(kl.mean()), "topk_mass": pk.sum(-1).numpy(),
            "topk_lost": lost.numpy(), "option_probs": np.array(options)}


@pytest.mark.parametrize("which", ["tiny", "gqa"])
def test_signals_and_option_probabilities_match_reference(models, tokenizer, which):
    """The validation outputs of the engine (same passes as curation) against the reference.

    Tolerances: mean entropy and top-K mass are fp32 sums like an entropy, ATOL; self-certainty
    is a mean of V fp32 log-probs (nats, magnitude < 20), the same kind of sum, ATOL; the entropy
    lost is a difference of two fp32 entropies, 2 * ATOL; a probability is one fp32 exp of a
    log-prob accurate to ATOL, and p <= 1, so ATOL."""
    model, ref_model = models[which]
    trajs = _trajs(tokenizer, 0)
    k, options = 5, [3, 17, 42, 99]
    scorer = TorchScorer(model, device="cpu", chunk_positions=4, probe_chunk=3, batch_tokens=150)
    plain = scorer.score(trajs, mode="plain", signals=True, top_k=k)
    probe = scorer.score(trajs, mode="probe", option_ids=options)
    for traj, row, prow in zip(trajs, plain, probe):
        ref = reference_signals(ref_model, traj, k, options)
        assert row["mean_entropy"] == pytest.approx(ref["mean_entropy"], abs=ATOL)
        assert row["self_certainty"] == pytest.approx(ref["self_certainty"], abs=ATOL)
        np.testing.assert_allclose(row["topk_mass"], ref["topk_mass"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(row["topk_lost"], ref["topk_lost"], atol=2 * ATOL, rtol=0)
        assert np.asarray(prow["option_probs"]).shape == (traj.T - 1, len(options))
        np.testing.assert_allclose(prow["option_probs"], ref["option_probs"], atol=ATOL, rtol=0)
        # the compared quantities really vary along the response (so an off-by-one shows)
        assert np.ptp(ref["topk_mass"]) > 0.05 and np.ptp(ref["option_probs"]) > 1e-3
    # curation's rows carry none of this
    assert not {"mean_entropy", "topk_mass", "option_probs"} & set(scorer.score(trajs[:1], mode="probe")[0])


def test_batching_and_chunking_do_not_change_results(models, tokenizer):
    model, _ = models["gqa"]
    trajs = _trajs(tokenizer, 1)
    one = TorchScorer(model, device="cpu", chunk_positions=10_000, probe_chunk=10_000, batch_tokens=1)
    many = TorchScorer(model, device="cpu", chunk_positions=1, probe_chunk=1, batch_tokens=10_000)
    # fp32 summation order differs between the two: 1e-4 bits per position (module docstring);
    # a batching bug (a sample seeing another's tokens) moves entropies by far more
    for a, b in zip(one.score(trajs), many.score(trajs)):
        np.testing.assert_allclose(a["suffix_entropy"], b["suffix_entropy"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(a["plain_entropy"], b["plain_entropy"], atol=ATOL, rtol=0)


def test_edis_columns_come_from_plain_trajectory(models, tokenizer):
    from undercurve import eas

    model, _ = models["tiny"]
    trajs = _trajs(tokenizer, 0)
    params = eas.EdisParams(window=2, tau_burst=0.1, tau_rebound=0.1, units="nats")
    scorer = TorchScorer(model, device="cpu", edis=params)
    for row in scorer.score(trajs, mode="probe"):
        e = eas.edis(row["plain_entropy"], params)
        assert (row["edis_burst"], row["edis_rebound"]) == (e.burst, e.rebound)
        # the same float64 reduction of the same stored values: equal up to float64 rounding
        assert row["edis"] == pytest.approx(e.score, rel=1e-12) and row["edis_var"] == pytest.approx(e.var, rel=1e-12)
        assert (row["edis_units"], row["edis_exact"]) == ("nats", True)
    assert any(r["edis"] > 0 for r in scorer.score(trajs, mode="plain"))


def test_trajectory_ends_at_the_last_answer_token(tokenizer):
    t = build_trajectory(SAMPLES[1], tokenizer, answer_prefix_tokens=2)
    text = tokenizer.decode(t.response_ids[: t.T])
    assert text.endswith("120") or text.endswith("120}") or text.endswith("120}.")
    assert not tokenizer.decode(t.response_ids[: t.T - 1]).endswith("120")
    assert t.T < len(t.response_ids)  # " Done." follows the answer
    box = tokenizer("\\boxed{", add_special_tokens=False)["input_ids"]
    ans = tokenizer("120", add_special_tokens=False)["input_ids"]
    assert t.suffix_ids == box + ans[:2]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": SAMPLES[1]["prompt"]}],
                                         add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(t.prompt_ids) == chat


@pytest.mark.parametrize(
    "sample,k,reason",
    [
        ({"id": "x", "prompt": "q", "response": "", "answer": "1"}, 0, "empty_response"),
        ({"id": "x", "prompt": "q", "response": "the answer is 4", "answer": "4"}, 0, "no_boxed_answer"),
        ({"id": "x", "prompt": "q", "response": "so \\boxed{ }", "answer": "4"}, 0, "empty_boxed_answer"),
        ({"id": "x", "prompt": "q", "response": "so \\boxed{4", "answer": "4"}, 0, "no_boxed_answer"),
        ({"id": "x", "prompt": "q", "response": "so \\boxed{4}", "answer": None}, 1, "no_ground_truth_answer"),
    ],
)
def test_unscorable_samples_give_a_reason(tokenizer, sample, k, reason):
    assert build_trajectory(sample, tokenizer, answer_prefix_tokens=k) == reason


def test_score_frame(tiny_model):
    bad = {"id": "z", "source": "s", "prompt": "q", "response": "no answer here", "answer": "1"}
    df = pl.DataFrame([{**s, "source": "s"} for s in SAMPLES[:2]] + [bad])
    settings = {"model": str(tiny_model), "mode": "probe", "answer_prefix_tokens": 1, "device": "cpu",
                "batch_tokens": 4096}
    scores, aside = score_frame(df, settings)
    assert scores.schema == pl.Schema(SCORE_SCHEMA)
    assert scores["id"].to_list() == ["a", "b"] and scores["engine"].to_list() == ["torch", "torch"]
    assert aside == [{"id": "z", "source": "s", "reason": "no_boxed_answer", "detail": "no answer here"}]
    assert all(len(e) == T - 1 for e, T in zip(scores["entropy"].to_list(), scores["T"].to_list()))
    # EAS is the float64 sum of the engine's entropies; the frame holds them as float32, each
    # within u = eps32/2 (relative) of what was summed, entropies are >= 0: rel u + T * eps64
    for eas_, e, T in zip(scores["eas"], scores["entropy"].to_list(), scores["T"]):
        u = float(np.finfo(np.float32).eps) / 2
        assert sum(e) == pytest.approx(eas_, rel=u + T * float(np.finfo(np.float64).eps))
    plain, _ = score_frame(df, {**settings, "mode": "plain"})
    assert plain["suffix_entropy"].to_list() == [None, None]
    with pytest.raises(NotImplementedError):
        score_frame(df, {**settings, "engine": "vllm"})


def test_entropy_kernel_against_float64_and_with_masked_vocab():
    from undercurve.scoring.torch_engine import next_token_stats

    torch.manual_seed(0)
    logits = torch.randn(5, 300) * 4 + 30  # large offset: the max shift must keep it exact
    logits[1, :200] = -float("inf")  # masked vocabulary entries: contribute 0, not NaN
    want = _entropy_bits(logits.clone())
    logp = torch.log_softmax(logits.double(), -1)
    targets = torch.tensor([0, 250, 2, 3, 299])
    got = next_token_stats(logits.clone(), targets, torch.empty(5, 300), top_k=3, certainty=True)
    # fp32 against float64: 1e-4 bits per entropy (SPEC section 4); a log-prob is one fp32
    # subtraction of values < 50 after the max shift: a few ulps, also well inside 1e-4
    np.testing.assert_allclose(got["H"].numpy(), want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["logprob"].numpy(), logp[range(5), targets].numpy(), atol=ATOL, rtol=0)
    assert got["H"][1] < math.log2(100) + ATOL  # only 100 entries are live in row 1
    top = logp.topk(3, -1).values
    np.testing.assert_allclose(got["topk_mass"].numpy(), top.exp().sum(-1).numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["topk_H"].numpy(), -(top.exp() * top).sum(-1).numpy() / math.log(2), atol=ATOL, rtol=0)
    # each log-prob floored at -1e4 nats, so a masked entry counts -1e4, not -inf;
    # a mean of values down to -1e4: two fp32 ulps of 1e4, ~1e-3 nats
    floored = logp.clamp(min=-1e4).mean(-1).numpy()
    np.testing.assert_allclose(got["mean_logp"].numpy(), floored, atol=1e4 * 2**-23, rtol=0)
    # several targets per row ([rows, k]): the options of paper Fig. 3
    many = next_token_stats(logits.clone(), torch.tensor([[0, 1]] * 5))["logprob"]
    np.testing.assert_allclose(many.numpy(), logp[:, :2].numpy(), atol=ATOL, rtol=0)


def test_engine_choice_is_made_in_one_place():
    from undercurve.config import ScoringSettings
    from undercurve.scoring import scores_in_shards

    assert scores_in_shards(ScoringSettings(engine="torch"))
    assert not scores_in_shards(ScoringSettings(engine="vllm"))
