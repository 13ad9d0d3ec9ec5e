"""The decontamination stage: n-gram then embedding matching, with evidence.

``decontaminate(df, settings)`` -> ``(kept, removed, report)``. Every removed row keeps
the method, the benchmark, the benchmark item id and the evidence (overlapping n-grams
or the cosine), so a user can audit each decision; rows in = kept + removed.
N-grams run first (cheap, exact, explainable); embeddings run on what n-grams kept, so a
removed row is attributed to the first method that caught it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import polars as pl

from undercurve.decontam import embed, ngram
from undercurve.decontam.suites import DEFAULT_SUITES, load_suites, tokenize
from undercurve.schema import SET_ASIDE_SCHEMA

log = logging.getLogger(__name__)

STAGE = "decontaminate"

DEFAULTS: dict = {
    "suites": list(DEFAULT_SUITES),  # names or dict specs (see suites.resolve_spec)
    "local_paths": {},  # suite name -> local JSONL/Parquet/CSV replacing the hub copy
    "ngram": True,
    "ngram_n": 13,  # GPT-3 / NeMo Curator; open-r1 uses 8
    "ngram_min_matches": 1,  # shared n-grams with ONE item needed to flag a sample
    # benchmark items shorter than n words are matched whole if they have this many
    # words (e.g. MATH-500 "Compute $\dbinom{31}{28}$." has 4); shorter ones only match
    # a prompt that is exactly the item
    "ngram_short_min": 6,
    "embedding": True,
    "embedding_model": embed.DEFAULT_MODEL,
    # all-MiniLM-L6-v2 cosines measured on tests/data/benchmarks + tests/test_decontam.py:
    # reworded/renamed/reordered copies of benchmark problems 0.80-0.95, same-topic
    # different problems (eggs, walks, lotteries) at most ~0.70; 0.75 sits in the gap.
    "cosine_threshold": 0.75,
    "embedding_batch_size": 128,  # best CPU throughput measured (32: -30%, 64: -10%)
    "embedding_max_tokens": 256,  # the model's own limit; questions rarely exceed it
    # dynamic int8 linear layers on CPU: ~1.5x samples per CPU-second, but cosines of the
    # test paraphrases drop by up to 0.07 (0.84 -> 0.77): use cosine_threshold ~0.70 with it
    "embedding_int8": False,
    "cache_dir": None,  # default: $UNDERCURVE_CACHE/decontam or ~/.cache/undercurve/decontam
    "examples": 5,  # examples per (benchmark, method) in the report
    "near_misses": 5,  # kept rows with the highest cosine, to audit the threshold
}

REMOVED_SCHEMA = {
    **SET_ASIDE_SCHEMA,
    "method": pl.Utf8,
    "benchmark": pl.Utf8,
    "benchmark_item_id": pl.Utf8,
    "evidence": pl.Utf8,  # JSON
}


def resolve_settings(settings: dict | None) -> dict:
    s = {**DEFAULTS, **(settings or {})}
    unknown = set(s) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown decontaminate settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if s["cache_dir"] is None:
        root = os.environ.get("UNDERCURVE_CACHE") or Path.home() / ".cache" / "undercurve"
        s["cache_dir"] = str(Path(root) / "decontam")
    if not s["ngram"] and not s["embedding"]:
        raise ValueError("decontaminate: enable at least one of 'ngram' and 'embedding'")
    return s


def _ngram_rows(df: pl.DataFrame, specs, suite_df: pl.DataFrame, s: dict) -> list[dict]:
    by_norm: dict[str, list] = {}
    for spec in specs:
        frame = suite_df.filter(pl.col("suite") == spec.name)
        ix = ngram.build_index(frame, n=s["ngram_n"], normaliser=spec.normaliser,
                               short_min=s["ngram_short_min"], cache_dir=s["cache_dir"])
        by_norm.setdefault(spec.normaliser, []).append(ix)
    rows = []
    for norm, indexes in by_norm.items():  # the corpus is tokenised once per normaliser
        hits = ngram.match(tokenize(df["prompt"], norm), indexes, min_matches=s["ngram_min_matches"])
        for h in hits.iter_rows(named=True):
            ev = {
                "n": s["ngram_n"], "gram_len": h["gram_len"], "whole_item": h["whole_item"],
                "matched_ngrams": h["matches"], "item_ngrams": h["item_grams"],
                "overlap": round(h["matches"] / max(h["item_grams"], 1), 4), "ngrams": h["ngrams"],
            }
            what = "whole item" if h["whole_item"] else f"{h['matches']}/{h['item_grams']} {s['ngram_n']}-grams"
            rows.append({"row": h["row"], "method": "ngram", "benchmark": h["suite"],
                         "benchmark_item_id": h["item_id"], "evidence": ev,
                         "detail": f"{what} shared with {h['suite']} item {h['item_id']}: '{h['ngrams'][0]}'"})
    # a row hit by two normaliser groups: keep its strongest evidence only
    best: dict[int, dict] = {}
    for r in rows:
        if r["row"] not in best or r["evidence"]["matched_ngrams"] > best[r["row"]]["evidence"]["matched_ngrams"]:
            best[r["row"]] = r
    return list(best.values())


def _embedding_rows(df, rows_left, suite_df, s, model) -> tuple[list[dict], pl.DataFrame]:
    tag = f"max{s['embedding_max_tokens']}-int8{s['embedding_int8']}"
    # suite_df is grouped by suite (load_suites concatenates them), so stacking the
    # per-suite embeddings keeps row i of suite_df = row i of the matrix
    emb = [
        embed.suite_embeddings(model, suite_df.filter(pl.col("suite") == name), model_name=s["embedding_model"],
                               cache_dir=s["cache_dir"], batch_size=s["embedding_batch_size"], model_tag=tag)
        for name in suite_df["suite"].unique(maintain_order=True)
    ]
    prompts = df["prompt"].gather(rows_left).to_list()
    near = embed.nearest(model, prompts, suite_df, np.concatenate(emb) if emb else np.zeros((0, 1), np.float32),
                         batch_size=s["embedding_batch_size"],
                         progress=lambda d, n: log.info("decontaminate: embedded %d/%d prompts", d, n))
    near = near.with_columns(pl.Series("row", rows_left, dtype=pl.Int64))
    thr = s["cosine_threshold"]
    rows = [
        {"row": r["row"], "method": "embedding", "benchmark": r["suite"], "benchmark_item_id": r["item_id"],
         "evidence": {"cosine": round(r["cosine"], 4), "threshold": thr, "model": s["embedding_model"]},
         "detail": f"cosine {r['cosine']:.3f} >= {thr} with {r['suite']} item {r['item_id']}"}
        for r in near.filter(pl.col("cosine") >= thr).iter_rows(named=True)
    ]
    return rows, near


def decontaminate(df: pl.DataFrame, settings: dict | None = None, *, model=None):
    """Split ``df`` (columns ``id, source, prompt, response, answer``) into kept / removed.

    Returns ``(kept_df, removed_df, report)``: ``kept_df`` has ``df``'s columns and row
    order; ``removed_df`` has ``REMOVED_SCHEMA``; ``report`` is JSON-able (counts per
    benchmark and method, examples, near misses, suites, settings, timings). ``model``:
    an already loaded SentenceTransformer (else ``settings["embedding_model"]``).
    """
    s = resolve_settings(settings)
    missing = {"id", "source", "prompt"} - set(df.columns)
    if missing:
        raise KeyError(f"decontaminate: input lacks columns {sorted(missing)} (needs id, source, prompt)")
    t0 = time.perf_counter()
    specs, suite_df = load_suites(s["suites"], s["local_paths"])
    timings = {"load_suites_s": time.perf_counter() - t0}
    prompts = df["prompt"].fill_null("")
    work = df.with_columns(prompt=prompts)

    hits: list[dict] = []
    if s["ngram"]:
        t = time.perf_counter()
        hits += _ngram_rows(work, specs, suite_df, s)
        timings["ngram_s"] = time.perf_counter() - t
    near = None
    if s["embedding"]:
        t = time.perf_counter()
        if model is None:
            model = embed.load_model(s["embedding_model"], max_tokens=s["embedding_max_tokens"], int8=s["embedding_int8"])
        timings["embedding_load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        caught = {h["row"] for h in hits}
        left = [i for i in range(df.height) if i not in caught]
        emb_hits, near = _embedding_rows(work, left, suite_df, s, model)
        hits += emb_hits
        timings["embedding_s"] = time.perf_counter() - t

    hits.sort(key=lambda h: h["row"])
    removed_idx = [h["row"] for h in hits]
    ids = df["id"].gather(removed_idx).to_list() if hits else []
    sources = df["source"].gather(removed_idx).to_list() if hits else []
    removed = pl.DataFrame(
        [{"id": i, "source": src, "stage": STAGE, "reason": f"contamination:{h['method']}",
          "detail": h["detail"][:2000], "method": h["method"], "benchmark": h["benchmark"],
          "benchmark_item_id": h["benchmark_item_id"], "evidence": json.dumps(h["evidence"], ensure_ascii=False)}
         for i, src, h in zip(ids, sources, hits)],
        schema=REMOVED_SCHEMA,
    )
    mask = pl.Series([True] * df.height, dtype=pl.Boolean)
    if removed_idx:
        mask = mask.scatter(removed_idx, False)
    kept = df.filter(mask)
    timings["total_s"] = time.perf_counter() - t0
    report = _report(df, kept, removed, hits, near, specs, suite_df, s, timings)
    log.info("decontaminate: %d rows -> %d kept, %d removed", df.height, kept.height, removed.height)
    return kept, removed, report


def _report(df, kept, removed, hits, near, specs, suite_df, s, timings) -> dict:
    counts = (
        removed.group_by("benchmark", "method").len().sort("benchmark", "method")
        if removed.height else pl.DataFrame(schema={"benchmark": pl.Utf8, "method": pl.Utf8, "len": pl.UInt32})
    )
    by_bench: dict = {}
    for r in counts.iter_rows(named=True):
        by_bench.setdefault(r["benchmark"], {})[r["method"]] = r["len"]
    examples = []
    prompts = df["prompt"]
    item_text = {(r[0], r[1]): r[2] for r in suite_df.iter_rows()}
    for (bench, method), grp in removed.with_row_index("_i").group_by("benchmark", "method", maintain_order=True):
        for r in grp.head(s["examples"]).iter_rows(named=True):
            h = hits[r["_i"]]
            examples.append({"id": r["id"], "benchmark": bench, "method": method,
                             "benchmark_item_id": r["benchmark_item_id"], "evidence": json.loads(r["evidence"]),
                             "prompt": (prompts[h["row"]] or "")[:300],
                             "benchmark_text": item_text.get((bench, r["benchmark_item_id"]), "")[:300]})
    near_misses = []
    if near is not None and near.height:
        below = near.filter(pl.col("cosine") < s["cosine_threshold"]).sort("cosine", descending=True)
        for r in below.head(s["near_misses"]).iter_rows(named=True):
            near_misses.append({"id": df["id"][r["row"]], "benchmark": r["suite"], "benchmark_item_id": r["item_id"],
                                "cosine": round(r["cosine"], 4), "prompt": (prompts[r["row"]] or "")[:300]})
    size = suite_df.group_by("suite").len()
    sizes = dict(zip(size["suite"].to_list(), size["len"].to_list()))
    return {
        "stage": STAGE,
        "rows_in": df.height,
        "kept": kept.height,
        "removed": removed.height,
        "counts": [{"benchmark": r["benchmark"], "method": r["method"], "count": r["len"]} for r in counts.iter_rows(named=True)],
        "by_benchmark": by_bench,
        "by_method": {m: int((removed["method"] == m).sum()) for m in ("ngram", "embedding")},
        "examples": examples,
        "near_misses": near_misses,
        "suites": [{"name": sp.name, "source": sp.path or sp.hub_id, "items": sizes.get(sp.name, 0),
                    "normaliser": sp.normaliser} for sp in specs],
        "settings": json.loads(json.dumps(s, default=str)),  # Paths in specs -> str
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
