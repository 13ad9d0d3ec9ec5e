"""The validation stages as plain functions (no Prefect): each reads Parquet, does one thing,
writes under ``<run_dir>/<stage>/`` atomically, records the artifact in the registry and
returns a small dict of paths and numbers. ``tasks/validate.py`` wraps them one to one.

questions -> generate (N samples, answers extracted) -> answer entropy per question
          -> score one response per question (torch engine: EAS, mean EAS, PPL, length, EDIS)
          -> candidate signals for every sample (EDIS, mean entropy, self-certainty, top-K mass)
          -> analysis (Pearson r table, best-of-N table, top-K truncation table) -> figures
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import polars as pl

from undercurve.answers import last_boxed_span
from undercurve.io import write_parquet_atomic, write_text_atomic
from undercurve.eas import decayed_option_probability, topk_truncation_bound
from undercurve.run import RunContext
from undercurve.scoring.trajectory import BOX_OPENER, Trajectory, build_trajectory, prompt_token_ids
from undercurve.validation import answer_entropy as ae
from undercurve.validation.best_of_n import compare_strategies
from undercurve.validation.correlation import METRICS, correlation_table

log = logging.getLogger("undercurve")


def _record(ctx: RunContext, stage: str, kind: str, path: Path, rows: int | None, parents=(), meta=None) -> str:
    return ctx.registry.add_artifact(ctx.run_id, stage, kind, path, rows, parents=list(parents), meta=meta)


# ---------------------------------------------------------------------------- prepare
def prepare_stage(ctx: RunContext) -> dict:
    """Load the benchmark into ``questions.parquet`` and resolve the model."""
    from undercurve.models import resolve_model
    from undercurve.validation.benchmark import load_questions

    s = ctx.settings
    b = s.benchmark
    q = load_questions(b.source, b.split, b.limit, b.seed, b.demo_size, b.demo_mc_fraction)
    path = write_parquet_atomic(q, ctx.stage_dir("questions") / "questions.parquet")
    aid = _record(ctx, "questions", "questions", path, q.height, meta={"source": b.source})
    texts = q["prompt"].to_list() + [f"The answer is \\boxed{{{a}}}." for a in q["answer"].to_list()]
    model = resolve_model(s.model.path, s.model.tiny_dir or str(Path(s.workdir) / "models"), texts)
    kinds = q["kind"].value_counts().to_dicts()
    log.info("validate: %d questions from %s (%s), model %s", q.height, b.source, kinds, model)
    return {"questions": str(path), "artifact_id": aid, "model": model, "n_questions": q.height}


# ---------------------------------------------------------------------------- generate
def generate_stage(ctx: RunContext, questions: str, model: str) -> dict:
    """N samples per question; answers extracted, normalised and checked -> samples.parquet."""
    from undercurve.validation.generate import generate

    s = ctx.settings
    g = s.generation.model_dump()
    q = pl.read_parquet(questions)
    d = ctx.stage_dir("generate")
    raw = generate(q, model, g, d, s.model.trust_remote_code)
    samples = annotate_samples(raw, q, s.generation.last_number_fallback)
    path = write_parquet_atomic(samples, d / "samples.parquet")
    aid = _record(ctx, "generate", "samples", path, samples.height,
                  meta={"engine": s.generation.engine, "n": s.generation.n})
    answered = samples["answer"].is_not_null().mean() if samples.height else 0.0
    log.info("generate: %d samples, %.0f%% with an answer, %.0f%% correct", samples.height,
             100 * (answered or 0), 100 * (samples["correct"].mean() or 0) if samples.height else 0)
    return {"samples": str(path), "artifact_id": aid, "rows": samples.height}


def annotate_samples(raw: pl.DataFrame, questions: pl.DataFrame, last_number_fallback: bool = True) -> pl.DataFrame:
    """raw samples (id, rollout, text, ...) + questions -> + raw_answer, answer (canonical), correct."""
    info = {r["id"]: r for r in questions.select("id", "answer", "kind").iter_rows(named=True)}
    raws, canon, correct = [], [], []
    for r in raw.iter_rows(named=True):
        qi = info[r["id"]]
        a = ae.extract(r["text"], qi["kind"], last_number_fallback)
        raws.append(a)
        canon.append(ae.canonical(a, qi["kind"]))
        correct.append(ae.is_correct(a, qi["answer"], qi["kind"]))
    return raw.with_columns(pl.Series("raw_answer", raws, pl.Utf8), pl.Series("answer", canon, pl.Utf8),
                            pl.Series("correct", correct, pl.Boolean))


# ---------------------------------------------------------------------------- answer entropy
def entropy_stage(ctx: RunContext, samples: str, parent: str | None = None) -> dict:
    stats = ae.question_stats(pl.read_parquet(samples), ctx.settings.missing_answer)
    path = write_parquet_atomic(stats, ctx.stage_dir("entropy") / "answer_entropy.parquet")
    aid = _record(ctx, "entropy", "answer_entropy", path, stats.height, [parent] if parent else ())
    log.info("answer entropy: mean %.3f bits, correctness entropy mean %.3f bits over %d questions",
             stats["answer_entropy"].mean() or 0, stats["correctness_entropy"].mean() or 0, stats.height)
    return {"entropy": str(path), "artifact_id": aid}


# ---------------------------------------------------------------------------- score one response
def pick_responses(samples: pl.DataFrame, questions: pl.DataFrame, append_boxed: bool = True) -> tuple[pl.DataFrame, list[dict]]:
    """One response per question: the first sample with an answer. A response whose answer was
    not in a \\boxed{} gets "The final answer is \\boxed{A}." appended (when ``append_boxed``)."""
    q = {r["id"]: r for r in questions.iter_rows(named=True)}
    rows, aside = [], []
    for (qid,), g in samples.sort("rollout").group_by("id", maintain_order=True):
        pick = None
        for r in g.iter_rows(named=True):
            if last_boxed_span(r["text"] or "") is not None and r["raw_answer"] is not None:
                pick = (r, r["text"], False)
                break
            if pick is None and append_boxed and r["raw_answer"] is not None:
                pick = (r, (r["text"] or "").rstrip() + f"\n\nThe final answer is \\boxed{{{r['raw_answer']}}}.", True)
        if pick is None:
            aside.append({"id": qid, "source": "validate", "reason": "no_answer_in_any_sample", "detail": ""})
            continue
        r, text, appended = pick
        rows.append({"id": qid, "source": "validate", "prompt": q[qid]["prompt"], "response": text,
                     "answer": q[qid]["answer"], "rollout": r["rollout"], "appended_answer": appended,
                     "kind": q[qid]["kind"]})
    schema = {"id": pl.Utf8, "source": pl.Utf8, "prompt": pl.Utf8, "response": pl.Utf8, "answer": pl.Utf8,
              "rollout": pl.Int64, "appended_answer": pl.Boolean, "kind": pl.Utf8}
    return pl.DataFrame(rows, schema=schema), aside


def score_stage(ctx: RunContext, questions: str, samples: str, model: str, parent: str | None = None) -> dict:
    """EAS, mean EAS, PPL, length, EDIS of one response per question (exact torch engine)."""
    from undercurve.scoring.score import score_frame

    s = ctx.settings
    picked, aside = pick_responses(pl.read_parquet(samples), pl.read_parquet(questions), s.scoring.append_boxed_answer)
    settings = {k: v for k, v in s.scoring.model_dump().items() if k not in ("append_boxed_answer", "top_k")}
    settings.update(model=model, engine="torch")
    scores, more = score_frame(picked.select("id", "source", "prompt", "response", "answer"), settings) if picked.height \
        else (pl.DataFrame(), [])
    aside += more
    if scores.height:
        scores = scores.join(picked.select("id", "rollout", "appended_answer", "kind", "prompt", "response"), on="id", how="left")
    d = ctx.stage_dir("score")
    path = write_parquet_atomic(scores, d / "scores.parquet")
    aid = _record(ctx, "score", "scores", path, scores.height, [parent] if parent else (), meta={"mode": s.scoring.mode})
    if aside:
        write_parquet_atomic(pl.DataFrame(aside), d / "set_aside.parquet")
    log.info("score: %d responses scored (%s), %d questions set aside", scores.height, s.scoring.mode, len(aside))
    return {"scores": str(path), "artifact_id": aid, "scored": scores.height, "set_aside": len(aside)}


# ---------------------------------------------------------------------------- candidate signals
def signals_stage(ctx: RunContext, questions: str, samples: str, scores: str, model: str,
                  parent: str | None = None) -> dict:
    """Per-sample EDIS / mean entropy / self-certainty / top-K mass, and the option
    probabilities of the multiple-choice questions (paper Fig. 3). The curation torch engine
    computes both: one plain pass over every sample, one probe pass over the MC responses."""
    from transformers import AutoTokenizer

    from undercurve.scoring.torch_engine import TorchScorer

    s = ctx.settings
    sc = s.scoring
    smp = pl.read_parquet(samples)
    q = pl.read_parquet(questions)
    prompts = dict(zip(q["id"], q["prompt"]))
    tokenizer = AutoTokenizer.from_pretrained(model)
    scorer = TorchScorer(model, device=sc.device, dtype=sc.dtype, batch_tokens=sc.batch_tokens, edis=sc.edis.params())
    top_k = max(sc.top_k, 0)  # -1 (full vocabulary) truncates nothing: no top-K columns
    trajs = [candidate_trajectory(tokenizer, r["id"], prompts[r["id"]], r["text"]) for r in smp.iter_rows(named=True)]
    rows = scorer.score(trajs, mode="plain", signals=True, top_k=top_k)
    cols = ["response_tokens", "T", "mean_entropy", "self_certainty", "edis", "edis_burst", "edis_rebound", "edis_var"]
    sig = pl.DataFrame([{k: r[k] for k in cols} for r in rows])
    extra = [pl.Series("plain_entropy", [r["plain_entropy"] for r in rows], pl.List(pl.Float64))]
    if top_k:
        extra += [pl.Series("topk_mass", [r["topk_mass"] for r in rows], pl.List(pl.Float64)),
                  pl.Series("topk_lost", [r["topk_lost"] for r in rows], pl.List(pl.Float64))]
    cands = pl.concat([smp.select("id", "rollout", "answer", "correct"), sig], how="horizontal").with_columns(extra)
    d = ctx.stage_dir("signals")
    path = write_parquet_atomic(cands, d / "candidates.parquet")
    aid = _record(ctx, "signals", "candidates", path, cands.height, [parent] if parent else (),
                  meta={"vocab_size": scorer.vocab_size})

    sc_df = pl.read_parquet(scores)
    mc = sc_df.filter(pl.col("kind") == "mc").head(s.plots.option_questions) if "kind" in sc_df.columns else sc_df.head(0)
    gold = dict(zip(q["id"], q["answer"]))
    curves_df = option_curves(scorer, tokenizer, mc, gold, s.plots.option_positions, s.plots.alpha)
    cpath = write_parquet_atomic(curves_df, d / "option_curves.parquet")
    log.info("signals: %d samples; option curves for %d MC questions", cands.height, curves_df["id"].n_unique())
    return {"candidates": str(path), "artifact_id": aid, "option_curves": str(cpath), "vocab_size": scorer.vocab_size}


def candidate_trajectory(tokenizer, sample_id: str, prompt: str, response: str | None) -> Trajectory:
    """A sampled response's plain trajectory: it ends at its final \\boxed{} answer when it has
    one, else at its last token (every candidate gets signals, answered or not)."""
    t = build_trajectory({"id": sample_id, "prompt": prompt, "response": response, "answer": None}, tokenizer)
    if isinstance(t, Trajectory):
        return t
    ids = list(tokenizer(response or "", add_special_tokens=False)["input_ids"])
    return Trajectory(sample_id, prompt_token_ids(tokenizer, prompt), ids, T=len(ids), suffix_ids=[])


def option_token_ids(tokenizer, letters) -> list[int]:
    """The token each option letter is written with right after "\\boxed{"."""
    prefix = list(tokenizer(BOX_OPENER, add_special_tokens=False)["input_ids"])
    ids = []
    for letter in letters:
        full = list(tokenizer(BOX_OPENER + letter, add_special_tokens=False)["input_ids"])
        if full[: len(prefix)] == prefix and len(full) > len(prefix):
            ids.append(full[len(prefix)])
        else:  # merged with the brace: fall back to the letter alone
            ids.append(tokenizer(letter, add_special_tokens=False)["input_ids"][0])
    return ids


def option_curves(scorer, tokenizer, responses: pl.DataFrame, gold: dict, max_positions: int,
                  alpha: float) -> pl.DataFrame:
    """Paper Fig. 3: P_t(option) under the probe context C_t = (prompt, x_1..x_t, "\\boxed{") of each
    response, and its decayed cumulative sum over t = 1..T-1, kept at ``max_positions`` evenly
    spread t (the sum itself runs over every t)."""
    schema = {"id": pl.Utf8, "t": pl.Int64, "T": pl.Int64, "option": pl.Utf8, "gold": pl.Boolean,
              "p": pl.Float64, "decayed": pl.Float64}
    trajs = []
    for r in responses.iter_rows(named=True):
        t = build_trajectory({"id": r["id"], "prompt": r["prompt"], "response": r["response"], "answer": None}, tokenizer)
        if isinstance(t, str):
            raise ValueError(f"response of {r['id']} cannot be probed: {t}")
        trajs.append(t)
    if not trajs:
        return pl.DataFrame(schema=schema)
    curves = []
    rows = scorer.score(trajs, mode="probe", option_ids=option_token_ids(tokenizer, ae.OPTION_LETTERS))
    for row in rows:
        P = np.asarray(row["option_probs"])  # [T-1, options], row i is t = i + 1
        decayed = decayed_option_probability(P, alpha)
        ts = np.arange(1, row["T"])
        if ts.size > max_positions:
            ts = np.unique(np.linspace(1, row["T"] - 1, max_positions).round().astype(int))
        for j, letter in enumerate(ae.OPTION_LETTERS):
            curves += [{"id": row["id"], "t": int(t), "T": row["T"], "option": letter, "gold": letter == gold[row["id"]],
                        "p": float(P[t - 1, j]), "decayed": float(decayed[t - 1, j])} for t in ts]
    return pl.DataFrame(curves, schema=schema)


# ---------------------------------------------------------------------------- analysis
def topk_table(cands: pl.DataFrame, vocab_size: int, k: int) -> pl.DataFrame:
    """Paper Table 1: top-K mass at the mean and the 90/95/99th percentile of the worst
    positions, the bound eps*log2((V-K)/eps) there, and the entropy actually lost."""
    if "topk_mass" not in cands.columns or cands.height == 0:
        return pl.DataFrame()
    mass = np.concatenate([np.asarray(m, dtype=np.float64) for m in cands["topk_mass"].to_list() if m])
    lost = np.concatenate([np.asarray(m, dtype=np.float64) for m in cands["topk_lost"].to_list() if m])
    rows = [{"statistic": "mean", "topk_mass": float(mass.mean()), "bound_bits": float(topk_truncation_bound(mass.mean(), vocab_size, k)),
             "lost_bits": float(lost.mean())}]
    for pct in (90, 95, 99):
        mq = float(np.quantile(mass, 1 - pct / 100))  # pct% of positions keep at least this much
        rows.append({"statistic": f"p{pct}", "topk_mass": mq, "bound_bits": float(topk_truncation_bound(mq, vocab_size, k)),
                     "lost_bits": float(np.quantile(lost, pct / 100))})
    return pl.DataFrame(rows).with_columns(pl.lit(k).alias("K"), pl.lit(vocab_size).alias("V"), pl.lit(mass.size).alias("positions"))


def analyse_stage(ctx: RunContext, entropy: str, scores: str, candidates: str, vocab_size: int,
                  parents=()) -> dict:
    s = ctx.settings
    stats = pl.read_parquet(entropy)
    sc = pl.read_parquet(scores)
    cands = pl.read_parquet(candidates)
    metric_cols = [c for c in ("eas", "mean_eas", "ppl", "response_tokens", "edis", "T") if c in sc.columns]
    joined = stats.join(sc.select("id", *metric_cols), on="id", how="inner") if sc.height else stats.head(0)
    corr = correlation_table(joined)
    bon = compare_strategies(cands, s.best_of_n.m, s.best_of_n.k, s.best_of_n.weight_eps) if s.best_of_n.enabled else pl.DataFrame()
    topk = topk_table(cands, vocab_size, s.scoring.top_k)
    d = ctx.stage_dir("analysis")
    paths = {
        "per_question": write_parquet_atomic(joined, d / "per_question.parquet"),
        "correlation": write_parquet_atomic(corr, d / "correlation.parquet"),
        "best_of_n": write_parquet_atomic(bon, d / "best_of_n.parquet"),
        "topk": write_parquet_atomic(topk, d / "topk_truncation.parquet"),
    }
    for name, df in (("correlation", corr), ("best_of_n", bon), ("topk", topk)):
        if df.height:
            df.write_csv(d / f"{name}.csv")
    md = report_markdown(s, stats, joined, corr, bon, topk, cands)
    paths["report"] = write_text_atomic(md, d / "report.md")
    for name, p in paths.items():
        _record(ctx, "analysis", name, p, None if name == "report" else pl.read_parquet(p).height, parents)
    return {"paths": {k: str(v) for k, v in paths.items()}, "markdown": md,
            "correlation": corr.to_dicts(), "best_of_n": bon.to_dicts(), "topk": topk.to_dicts(),
            "questions": stats.height, "scored": joined.height}


def _fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{nd}f}"
    return str(v)


def report_markdown(s, stats, joined, corr, bon, topk, cands) -> str:
    g = s.generation
    lines = [f"# Metric validation: {s.run_name}", "",
             f"Model `{s.model.path}`, benchmark `{s.benchmark.source}` ({stats.height} questions), "
             f"N = {g.n} samples per question (T = {g.temperature}, top-p = {g.top_p}, max {g.max_tokens} tokens, {g.engine}). "
             f"Scoring: torch engine, {s.scoring.mode} mode, answer_prefix_tokens = {s.scoring.answer_prefix_tokens}.", "",
             f"Samples with an answer: {_fmt(float(cands['answer'].is_not_null().mean() or 0) if cands.height else math.nan)}; "
             f"correct: {_fmt(float(cands['correct'].mean() or 0) if cands.height else math.nan)}; "
             f"mean answer entropy {_fmt(stats['answer_entropy'].mean())} bits; "
             f"mean correctness entropy {_fmt(stats['correctness_entropy'].mean())} bits.", "",
             "## Pearson r against answer entropy (paper Table 2, Figure 2)", "",
             "| metric | r (answer entropy) [95% CI] | p | r (correctness entropy) [95% CI] | p | n |",
             "|---|---|---|---|---|---|"]
    by = {(r["metric"], r["target"]): r for r in corr.to_dicts()}

    def r_ci(x: dict | None) -> str:
        return "n/a" if x is None else f"{_fmt(x['r'])} [{_fmt(x['r_low'])}, {_fmt(x['r_high'])}]"

    for m in METRICS:
        a, c = by.get((m, "answer_entropy")), by.get((m, "correctness_entropy"))
        if a:
            lines.append(f"| {m} | {r_ci(a)} | {_fmt(a['p'])} | {r_ci(c)} | {_fmt(c['p']) if c else 'n/a'} | {a['n']} |")
    if bon.height:
        lines += ["", f"## Best-of-N accuracy (k = {s.best_of_n.k} kept, N = m x k)", "",
                  "| m | N | " + " | ".join(bon["strategy"].unique(maintain_order=True)) + " | questions |",
                  "|---|---|" + "---|" * bon["strategy"].n_unique() + "---|"]
        for (m,), grp in bon.group_by("m", maintain_order=True):
            lines.append(f"| {m} | {grp['N'][0]} | " + " | ".join(_fmt(v) for v in grp["accuracy"]) + f" | {grp['questions'][0]} |")
    if topk.height:
        lines += ["", f"## Top-{topk['K'][0]} truncation (paper Table 1; V = {topk['V'][0]}, {topk['positions'][0]} positions)", "",
                  "| statistic | top-K mass | bound (bits) | entropy actually lost (bits) |", "|---|---|---|---|"]
        for r in topk.to_dicts():
            lines.append(f"| {r['statistic']} | {100 * r['topk_mass']:.3f}% | {_fmt(r['bound_bits'])} | {_fmt(r['lost_bits'])} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- figures
def plots_stage(ctx: RunContext, entropy: str, scores: str, candidates: str, option_curves: str,
                best_of_n: str) -> dict:
    from undercurve.validation import plots

    s = ctx.settings
    d = ctx.stage_dir("plots")
    stats, sc = pl.read_parquet(entropy), pl.read_parquet(scores)
    joined = stats.join(sc, on="id", how="inner") if sc.height else pl.DataFrame()
    out = {}
    if joined.height:
        row = joined.sort("answer_entropy").row(joined.height // 2, named=True)  # a typical question
        out["entropy_curve"] = plots.entropy_curve(row, d / "fig1_entropy_curve.png", s.scoring.mode, s.plots.dpi)
        out["metric_scatter"] = plots.metric_scatter(joined, d / "fig2_metric_vs_answer_entropy.png", s.plots.dpi)
    curves = pl.read_parquet(option_curves)
    if curves.height:
        out["option_curves"] = plots.option_curves(curves, d / "fig3_option_probability.png", s.plots.alpha, s.plots.dpi)
    bon = pl.read_parquet(best_of_n)
    if bon.height:
        out["best_of_n"] = plots.best_of_n(bon, d / "best_of_n.png", s.plots.dpi)
    for name, p in out.items():
        _record(ctx, "plots", f"figure:{name}", p, None)
    return {k: str(v) for k, v in out.items()}


def run_summary(ctx: RunContext, prep: dict, gen: dict, score: dict, analysis: dict, figures: dict) -> dict:
    return {"run_id": ctx.run_id, "run_dir": str(ctx.run_dir.resolve()), "questions": prep["n_questions"],
            "samples": gen["rows"], "scored": score["scored"], "set_aside": score["set_aside"],
            "correlation": analysis["correlation"], "best_of_n": analysis["best_of_n"], "topk": analysis["topk"],
            "report": analysis["paths"]["report"], "figures": figures}


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
