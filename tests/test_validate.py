"""Metric validation: answer entropy, Pearson r, best-of-N selection and the top-K table on
crafted inputs with hand-computed answers; the figures; one small validate flow run."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from undercurve.validation import answer_entropy as ae
from undercurve.validation.best_of_n import compare_strategies, keep_best, majority_vote, weighted_borda
from undercurve.validation.correlation import correlation_table, pearson, regression_line


# ---------------------------------------------------------------- answer entropy
@pytest.mark.parametrize("answers, expected", [
    (["1", "1", "1", "1"], 0.0),
    (["1", "1", "2", "2"], 1.0),
    (["1", "2", "3", "4"], 2.0),
    (["1", "1", "1", "2"], -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))),  # 0.8113
    (["7"] * 6 + ["8"] * 2, 0.8112781244591328),
])
def test_answer_entropy_bits(answers, expected):
    assert ae.answer_entropy(answers) == pytest.approx(expected, abs=1e-12)


def test_answer_entropy_missing_answers():
    answers = ["1", "1", None, None]
    assert ae.answer_entropy(answers, "category") == pytest.approx(1.0)  # "no answer" is one more answer
    assert ae.answer_entropy(answers, "drop") == pytest.approx(0.0)      # only "1" is left
    assert ae.answer_entropy([None, None], "drop") == 0.0
    with pytest.raises(ValueError):
        ae.answer_entropy(answers, "ignore")


def test_answers_are_grouped_after_normalisation():
    texts = ["so \\boxed{1,000}", "\\boxed{1000}", "total: \\boxed{1000.0}", "#### 1000", "I get 999 then 1000"]
    keys = [ae.canonical(ae.extract(t), "free") for t in texts]
    assert set(keys) == {"1000"}
    assert ae.answer_entropy(keys) == 0.0
    assert ae.extract("no digits here", "free") is None
    assert ae.extract("no digits 5", "free", last_number_fallback=False) is None
    mc = [ae.extract(t, "mc") for t in ("\\boxed{B}", "\\boxed{(b)}", "The answer is C.", "\\boxed{\\text{B}}")]
    assert mc == ["B", "B", "C", "B"]
    assert ae.is_correct("\\frac{1}{2}", "0.5") and not ae.is_correct("2", "3")
    assert ae.is_correct("(b)", "B", "mc") and not ae.is_correct("A", "B", "mc")


def test_correctness_entropy():
    assert ae.binary_entropy(0.5) == pytest.approx(1.0)
    assert ae.correctness_entropy([True, False, True, False]) == pytest.approx(1.0)
    assert ae.correctness_entropy([True, True, True, False]) == pytest.approx(0.8112781244591328)
    assert ae.correctness_entropy([True] * 5) == 0.0 and ae.correctness_entropy([False] * 5) == 0.0
    with pytest.raises(ValueError):
        ae.binary_entropy(1.5)


def test_question_stats():
    df = pl.DataFrame({
        "id": ["q1"] * 4 + ["q2"] * 4,
        "rollout": [3, 2, 1, 0, 0, 1, 2, 3],
        "answer": ["5", "6", "5", None, "2", "2", "2", "2"],
        "correct": [True, False, True, False, False, False, False, False],
    })
    s = {r["id"]: r for r in ae.question_stats(df).to_dicts()}
    assert s["q1"]["answer_entropy"] == pytest.approx(1.5)  # {5: 2, 6: 1, none: 1}
    assert s["q1"]["pass_rate"] == 0.5 and s["q1"]["correctness_entropy"] == pytest.approx(1.0)
    assert (s["q1"]["answered"], s["q1"]["distinct"], s["q1"]["majority"]) == (3, 2, "5")
    assert s["q2"]["answer_entropy"] == 0.0 and s["q2"]["correctness_entropy"] == 0.0
    assert ae.question_stats(df, "drop").filter(pl.col("id") == "q1")["answer_entropy"][0] == pytest.approx(0.9182958340544896)


# ---------------------------------------------------------------- correlation
def test_pearson_against_hand_computation():
    from scipy import stats

    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    r, p, n = pearson(x, y)
    assert r == pytest.approx(0.8) and n == 5  # cov 2.0 / (var 2.0) by hand
    tstat = 0.8 * math.sqrt(3) / math.sqrt(1 - 0.64)
    assert p == pytest.approx(2 * stats.t.sf(tstat, df=3), rel=1e-9)  # 0.1041
    assert pearson([1, 2, 3], [6, 4, 2])[0] == pytest.approx(-1.0)
    r2, _, n2 = pearson([1, 2, float("nan"), 4, 5, 6], [2, 1, 9, 3, 5, float("inf")])
    assert n2 == 4 and r2 == pytest.approx(np.corrcoef([1, 2, 4, 5], [2, 1, 3, 5])[0, 1])
    assert math.isnan(pearson([1, 1, 1, 1], [1, 2, 3, 4])[0])  # constant: undefined
    assert math.isnan(pearson([1, 2], [3, 4])[0])  # too few
    assert regression_line([0, 1, 2], [1, 3, 5]) == pytest.approx((2.0, 1.0))


def test_correlation_table():
    df = pl.DataFrame({"answer_entropy": [0.0, 1.0, 2.0, 1.5], "correctness_entropy": [0.0, 1.0, 0.5, 0.9],
                       "eas": [1.0, 3.0, 5.0, 4.0], "ppl": [4.0, 3.0, 2.0, 1.0], "response_tokens": [1, 2, 3, 4]})
    t = correlation_table(df)
    assert set(t["metric"]) == {"eas", "ppl", "response_tokens"} and t.height == 6
    eas = t.filter((pl.col("metric") == "eas") & (pl.col("target") == "answer_entropy")).row(0, named=True)
    assert eas["r"] == pytest.approx(1.0) and eas["n"] == 4
    ppl = t.filter((pl.col("metric") == "ppl") & (pl.col("target") == "answer_entropy"))["r"][0]
    assert ppl == pytest.approx(np.corrcoef([0, 1, 2, 1.5], [4, 3, 2, 1])[0, 1])
    assert ((t["r_low"] <= t["r"]) & (t["r"] <= t["r_high"])).all()


def test_r_interval_matches_scipy_on_random_data():
    """The Fisher z interval against scipy's own (a different implementation of the same rule)."""
    from scipy import stats

    from undercurve.validation.correlation import r_interval

    rng = np.random.default_rng(4)
    for n in (5, 30, 200):
        x = rng.normal(size=n)
        y = 0.5 * x + rng.normal(size=n)
        res = stats.pearsonr(x, y)
        ci = res.confidence_interval(0.95)
        # float64 atanh/tanh of a value in (-1, 1): agreement to ~1e-12
        assert r_interval(float(res.statistic), n) == pytest.approx((ci.low, ci.high), abs=1e-12)


# ---------------------------------------------------------------- best-of-N
def test_weighted_borda_keeps_lowest_and_weights():
    answers, edis = ["5", "7", "7", "9"], [0.0, 1.0, 1.2, 0.1]
    assert keep_best(answers, edis, 3) == [0, 3, 1]
    assert majority_vote(answers) == "7"
    # kept: 5 (w = 1/0.1 = 10), 9 (1/0.2 = 5), 7 (1/1.1): "5" wins
    assert weighted_borda(answers, edis, 3) == "5"
    # two medium votes beat one better one: a = 1/0.4 = 2.5, b = 1/0.3 + 1/0.35 = 6.19
    assert weighted_borda(["a", "b", "b"], [0.3, 0.2, 0.25], 3) == "b"
    # but keeping only the best one (k=1) picks it alone
    assert weighted_borda(["a", "b", "b"], [0.1, 0.2, 0.25], 1) == "a"
    # self-certainty: higher is better; kept 5.0 and 4.9 -> s = 0 and 0.1 -> x (10) beats z (5)
    assert weighted_borda(["x", "y", "z"], [5.0, 4.0, 4.9], 2, higher_is_better=True) == "x"
    # unanswered candidates never vote; nothing answered -> None
    assert weighted_borda([None, "3"], [0.0, 5.0], 1) == "3"
    assert weighted_borda([None, None], [0.0, 1.0], 2) is None and majority_vote([None]) is None
    assert majority_vote(["a", "b", "b", "a"]) == "a"  # tie -> first seen


def test_compare_strategies_accuracy():
    # q1: gold "1". rollouts 0..3 answer 2,1,1,2 ; q2: gold "4". rollouts answer 4,5,5,None
    cands = pl.DataFrame({
        "id": ["q1"] * 4 + ["q2"] * 4, "rollout": [0, 1, 2, 3] * 2,
        "answer": ["2", "1", "1", "2", "4", "5", "5", None],
        "correct": [False, True, True, False, True, False, False, False],
        "edis": [3.0, 0.5, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0],
        "mean_entropy": [0.1, 2.0, 2.0, 0.2, 3.0, 0.5, 0.6, 0.0],
        "self_certainty": [1.0, 2.0, 3.0, 4.0, 9.0, 1.0, 1.0, 1.0],
    })
    acc = {(r["m"], r["strategy"]): r["accuracy"] for r in compare_strategies(cands, [1, 2, 4], k=1).to_dicts()}
    # m=1 (N=1): only rollout 0 -> q1 wrong, q2 right for every strategy
    assert all(acc[(1, s)] == 0.5 for s in ("mean", "majority", "edis", "mean_entropy", "self_certainty"))
    # m=2: q1 {2, 1}: edis keeps "1" (0.5 < 3) right; mean_entropy keeps "2" wrong; self-cert keeps "1" right
    #      q2 {4, 5}: edis keeps "4" right; mean_entropy keeps "5" wrong; self-cert keeps "4" right
    assert acc[(2, "edis")] == 1.0 and acc[(2, "mean_entropy")] == 0.0 and acc[(2, "self_certainty")] == 1.0
    assert acc[(2, "mean")] == 0.5 and acc[(2, "majority")] == 0.5  # ties -> first seen: "2" wrong, "4" right
    # m=4: majority q1 "2" (tie, first seen) wrong, q2 "5" wrong; edis q1 "1", q2: None not kept -> "4"
    assert acc[(4, "majority")] == 0.0 and acc[(4, "edis")] == 1.0
    assert acc[(4, "mean")] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert acc[(4, "self_certainty")] == 0.5  # q1 keeps rollout 3 ("2", 4.0) wrong; q2 "4" right


# ---------------------------------------------------------------- top-K table, picking, figures
def test_topk_table_uses_the_bound():
    from undercurve.eas import topk_truncation_bound
    from undercurve.validation.stages import topk_table

    cands = pl.DataFrame({"topk_mass": [[0.99, 0.98], [1.0, 0.9]], "topk_lost": [[0.01, 0.02], [0.0, 0.3]]})
    t = {r["statistic"]: r for r in topk_table(cands, vocab_size=1000, k=20).to_dicts()}
    assert t["mean"]["topk_mass"] == pytest.approx(0.9675)
    assert t["mean"]["bound_bits"] == pytest.approx(0.0325 * math.log2(980 / 0.0325))
    assert t["p99"]["topk_mass"] == pytest.approx(np.quantile([0.99, 0.98, 1.0, 0.9], 0.01))
    assert t["p99"]["bound_bits"] == pytest.approx(topk_truncation_bound(t["p99"]["topk_mass"], 1000, 20))
    assert all(r["lost_bits"] <= r["bound_bits"] + 1e-12 for r in t.values())


def test_pick_responses_appends_a_boxed_answer():
    from undercurve.validation.stages import pick_responses

    q = pl.DataFrame({"id": ["a", "b", "c"], "prompt": ["p"] * 3, "answer": ["3", "4", "5"], "kind": ["free"] * 3})
    s = pl.DataFrame({"id": ["a", "a", "b", "c"], "rollout": [0, 1, 0, 0],
                      "text": ["it is 3", "so \\boxed{3}", "4 apples", "none"], "raw_answer": ["3", "3", "4", None]})
    picked, aside = pick_responses(s, q)
    rows = {r["id"]: r for r in picked.to_dicts()}
    assert rows["a"]["rollout"] == 1 and not rows["a"]["appended_answer"]  # a boxed one is preferred
    assert rows["b"]["response"].endswith("\\boxed{4}.") and rows["b"]["appended_answer"]
    assert [x["id"] for x in aside] == ["c"]


def test_candidate_signals_for_unanswered_and_empty_samples(tiny_model):
    """Every sample gets signals: its trajectory ends at its boxed answer, else at its last token."""
    from transformers import AutoTokenizer

    from undercurve.scoring.torch_engine import TorchScorer
    from undercurve.validation.stages import candidate_trajectory

    tok = AutoTokenizer.from_pretrained(tiny_model)
    boxed = candidate_trajectory(tok, "a", "2 + 5?", "2 + 5 = 7, so \\boxed{7}. Done.")
    unanswered = candidate_trajectory(tok, "b", "2 + 5?", "I am not sure about this one")
    empty = candidate_trajectory(tok, "c", "2 + 5?", "")
    assert 2 <= boxed.T < boxed.length  # ends at the answer, not at " Done."
    assert unanswered.T == unanswered.length > 0 and empty.T == empty.length == 0
    rows = TorchScorer(tiny_model, device="cpu").score([boxed, unanswered, empty], mode="plain", signals=True, top_k=5)
    assert [len(r["plain_entropy"]) for r in rows] == [boxed.T, unanswered.T, 0]  # EDIS: H_1..H_T
    assert [len(r["topk_mass"]) for r in rows] == [boxed.length, unanswered.length, 0]  # every drawn token
    assert math.isnan(rows[2]["mean_entropy"]) and math.isnan(rows[2]["self_certainty"]) and rows[2]["edis"] == 0.0


def test_option_curves_decay_over_every_position(tiny_model):
    """P~_t sums over every k <= t (SPEC section 1); only the stored rows are thinned."""
    from transformers import AutoTokenizer

    from undercurve.eas import decayed_option_probability
    from undercurve.validation.stages import option_curves

    P = np.random.default_rng(0).dirichlet(np.ones(4), size=200)

    class Engine:  # the torch engine's probe rows, with known option probabilities
        def score(self, trajs, mode, option_ids):
            assert mode == "probe" and len(option_ids) == 4
            return [{"id": t.id, "T": t.T, "option_probs": P[: t.T - 1].tolist()} for t in trajs]

    tok = AutoTokenizer.from_pretrained(tiny_model)
    responses = pl.DataFrame({"id": ["q"], "prompt": ["Pick one."],
                              "response": ["Tom has 3 apples and buys 4 more, 3 + 4 = 7, so \\boxed{B}"]})
    cur = option_curves(Engine(), tok, responses, {"q": "B"}, max_positions=5, alpha=0.5)
    T = cur["T"][0]
    a = cur.filter(pl.col("option") == "A").sort("t")
    t = a["t"].to_numpy()
    assert T - 1 > 5 and a.height == 5 and (t[0], t[-1]) == (1, T - 1)
    # float64 arithmetic on the same numbers: rounding only
    np.testing.assert_allclose(a["p"].to_numpy(), P[t - 1, 0], rtol=1e-12)
    np.testing.assert_allclose(a["decayed"].to_numpy(), decayed_option_probability(P[: T - 1], 0.5)[t - 1, 0], rtol=1e-12)
    assert cur.filter(pl.col("gold"))["option"].unique().to_list() == ["B"]


def test_figures_are_written(tmp_path):
    from undercurve.validation import plots

    rng = np.random.default_rng(0)
    H = rng.uniform(0, 3, 40).tolist()
    row = {"id": "q1", "entropy": H, "plain_entropy": H, "eas": float(sum(H)), "answer_entropy": 1.2}
    df = pl.DataFrame({"answer_entropy": rng.uniform(0, 2, 12), "eas": rng.uniform(0, 50, 12), "mean_eas": rng.uniform(0, 3, 12),
                       "ppl": rng.uniform(1, 5, 12), "response_tokens": rng.integers(10, 100, 12), "edis": rng.uniform(0, 9, 12)})
    curves = pl.DataFrame([{"id": "q", "t": t, "T": 10, "option": o, "gold": o == "B", "p": 0.1, "decayed": 0.1 * t}
                           for o in "ABCD" for t in range(1, 10)])
    bon = pl.DataFrame([{"m": m, "k": 2, "N": 2 * m, "strategy": s, "questions": 5, "accuracy": 0.1 * m}
                        for m in (1, 2, 4) for s in ("mean", "majority", "edis")])
    paths = [plots.entropy_curve(row, tmp_path / "f1.png"), plots.metric_scatter(df, tmp_path / "f2.png"),
             plots.option_curves(curves, tmp_path / "f3.png"), plots.best_of_n(bon, tmp_path / "bon.png")]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_settings_reject_unknown_keys_and_too_large_n(tmp_path):
    from undercurve.config import ConfigError
    from undercurve.validation.config import load_validate_settings

    with pytest.raises(ConfigError, match="did you mean 'generation.n'"):
        load_validate_settings(None, {"generation.nn": 3})
    with pytest.raises(ConfigError):
        load_validate_settings(None, {"generation.n": 4, "best_of_n.m": [4], "best_of_n.k": 2})
    s = load_validate_settings("configs/validate_demo.yaml")
    assert s.generation.n >= max(s.best_of_n.m) * s.best_of_n.k


# ---------------------------------------------------------------- one small real flow run
def test_validate_flow_runs_on_tiny_model(prefect_harness, tmp_path):
    from flows.validate import validate
    from undercurve.registry import Registry

    overrides = {"workdir": str(tmp_path), "run_name": "t", "model.tiny_dir": str(tmp_path / "models"),
                 "benchmark.demo_size": 4, "generation.engine": "hf", "generation.n": 4, "generation.max_tokens": 24,
                 "best_of_n.m": [1, 2], "plots.option_questions": 1, "plots.option_positions": 8}
    out = validate("configs/validate_demo.yaml", overrides)
    assert out["questions"] == 4 and out["samples"] == 16
    run_dir = tmp_path / "t"
    stats = pl.read_parquet(run_dir / "entropy" / "answer_entropy.parquet")
    assert stats.height == 4 and ((stats["answer_entropy"] >= 0) & (stats["answer_entropy"] <= 2)).all()  # log2(4) max
    bon = pl.read_parquet(run_dir / "analysis" / "best_of_n.parquet")
    assert set(bon["strategy"]) == {"mean", "majority", "edis", "mean_entropy", "self_certainty"}
    assert "## Pearson r against answer entropy" in out["markdown"]
    assert out["figures"], "no figure was drawn"
    for p in out["figures"].values():
        assert p.endswith(".png")
    reg = Registry(tmp_path / "registry.duckdb")
    runs = reg.query("SELECT status FROM runs WHERE flow = 'validate'")
    assert runs["status"].to_list() == ["COMPLETED"]
