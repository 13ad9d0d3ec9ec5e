"""The decontamination stage: n-gram then embedding matching, with evidence.

``decontaminate(df, settings)`` -> ``(kept, removed, report)``; ``Decontaminator`` does the
same for a corpus streamed through it in batches. Every removed row keeps the method, the
benchmark, the benchmark item id and the evidence (overlapping n-grams or the cosine), so a
user can audit each decision; rows in = kept + removed.
N-grams run first (cheap, exact, explainable); embeddings run on what n-grams kept, so a
removed row is attributed to the first method that caught it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from undercurve.decontam import embed, ngram
from undercurve.decontam.suites import DEFAULT_SUITES, content_hash, load_suites, tokenize
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
    # the content-keyed result cache (undercurve.cache) that keeps each prompt's nearest
    # benchmark item: set by the stage to the workdir's cache; None: every prompt is embedded
    "result_cache": None,
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


def _check_columns(columns) -> None:
    missing = {"id", "source", "prompt"} - set(columns)
    if missing:
        raise KeyError(f"decontaminate: input lacks columns {sorted(missing)} (needs id, source, prompt)")


def _lookups(specs, suite_df: pl.DataFrame, s: dict) -> dict[str, ngram.Lookup]:
    """One n-gram lookup table per normaliser: the corpus is tokenised once per normaliser."""
    by_norm: dict[str, list] = {}
    for spec in specs:
        frame = suite_df.filter(pl.col("suite") == spec.name)
        ix = ngram.build_index(frame, n=s["ngram_n"], normaliser=spec.normaliser,
                               short_min=s["ngram_short_min"], cache_dir=s["cache_dir"])
        by_norm.setdefault(spec.normaliser, []).append(ix)
    return {norm: ngram.Lookup.build(indexes) for norm, indexes in by_norm.items()}


def _ngram_rows(df: pl.DataFrame, lookups: dict[str, ngram.Lookup], s: dict) -> list[dict]:
    rows = []
    for norm, lookup in lookups.items():
        hits = ngram.match(tokenize(df["prompt"], norm), lookup, min_matches=s["ngram_min_matches"])
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


def _suite_embeddings(suite_df: pl.DataFrame, s: dict, model) -> np.ndarray:
    tag = f"max{s['embedding_max_tokens']}-int8{s['embedding_int8']}"
    # suite_df is grouped by suite (load_suites concatenates them), so stacking the
    # per-suite embeddings keeps row i of suite_df = row i of the matrix
    emb = [
        embed.suite_embeddings(model, suite_df.filter(pl.col("suite") == name), model_name=s["embedding_model"],
                               cache_dir=s["cache_dir"], batch_size=s["embedding_batch_size"], model_tag=tag)
        for name in suite_df["suite"].unique(maintain_order=True)
    ]
    return np.concatenate(emb) if emb else np.zeros((0, 1), np.float32)


def _embedding_rows(df, rows_left, suite_df, suite_emb, s, model, memo=None) -> tuple[list[dict], pl.DataFrame]:
    prompts = df["prompt"].gather(rows_left).to_list()
    near = embed.nearest(model, prompts, suite_df, suite_emb, batch_size=s["embedding_batch_size"], memo=memo)
    near = near.with_columns(pl.Series("row", rows_left, dtype=pl.Int64))
    thr = s["cosine_threshold"]
    rows = [
        {"row": r["row"], "method": "embedding", "benchmark": r["suite"], "benchmark_item_id": r["item_id"],
         "evidence": {"cosine": round(r["cosine"], 4), "threshold": thr, "model": s["embedding_model"]},
         "detail": f"cosine {r['cosine']:.3f} >= {thr} with {r['suite']} item {r['item_id']}"}
        for r in near.filter(pl.col("cosine") >= thr).iter_rows(named=True)
    ]
    return rows, near


class Decontaminator:
    """The filter for a corpus that streams through it: ``filter`` one batch at a time, then
    ``report``.

    The benchmark n-gram tables and embeddings are built once and stay in memory (they are
    benchmark-sized); the corpus does not. Each row is judged on its own (grams never span
    rows; a prompt's nearest item does not depend on the other prompts), so batches give the
    rows of one pass over the whole corpus. What crosses batches is the report's state:
    counts, the first examples per (benchmark, method) and the top near misses. Distinct
    prompts are embedded once per batch; one repeated in a later batch is embedded again
    unless a result cache (``result_cache``: the nearest-item memo) holds it. Call ``close``
    after the last batch.
    """

    def __init__(self, settings: dict | None = None, *, model=None):
        t0 = time.perf_counter()
        s = self.s = resolve_settings(settings)
        self.specs, self.suite_df = load_suites(s["suites"], s["local_paths"])
        self.timings = {"load_suites_s": time.perf_counter() - t0}
        self.lookups: dict[str, ngram.Lookup] = {}
        if s["ngram"]:
            t = time.perf_counter()
            self.lookups = _lookups(self.specs, self.suite_df, s)
            self._took("ngram_s", t)
        self.model, self.suite_emb = model, None
        if s["embedding"]:
            t = time.perf_counter()
            if model is None:
                self.model = embed.load_model(s["embedding_model"], max_tokens=s["embedding_max_tokens"],
                                              int8=s["embedding_int8"])
            self._took("embedding_load_s", t)
            t = time.perf_counter()
            self.suite_emb = _suite_embeddings(self.suite_df, s, self.model)
            self._took("embedding_s", t)
        self.memo = None
        if s["embedding"] and s["result_cache"]:
            from undercurve.cache import model_identity

            self.memo = embed.NearestMemo(s["result_cache"], {
                "model_identity": model_identity(s["embedding_model"], Path(s["result_cache"]) / "model-hashes.json"),
                "max_tokens": s["embedding_max_tokens"], "int8": s["embedding_int8"],
                "benchmark_items": content_hash(self.suite_df, "nearest")})
        self.item_text = {(r[0], r[1]): r[2] for r in self.suite_df.iter_rows()}
        self.rows_in = self.kept = 0
        self.counts: Counter = Counter()  # (benchmark, method) -> removed rows
        self.examples: dict[tuple, list[dict]] = {}  # (benchmark, method) -> its first removed rows
        self.near: list[tuple] = []  # (-cosine, corpus row, entry): the best near misses so far
        self._took("total_s", t0)

    def close(self) -> None:
        """Write what the nearest-item memo still holds in memory (call after the last batch)."""
        if self.memo:
            self.memo.flush()

    # ``with Decontaminator(...) as filt:`` closes it even when a batch or the caller fails, so
    # the prompts embedded before the failure are not embedded again by the next run.
    def __enter__(self) -> "Decontaminator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _took(self, key: str, since: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - since

    def filter(self, df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """One batch (columns ``id, source, prompt, ...``) -> ``(kept, removed)``: ``kept`` has
        ``df``'s columns and row order, ``removed`` has ``REMOVED_SCHEMA``, in row order."""
        _check_columns(df.columns)
        t0 = time.perf_counter()
        s = self.s
        work = df.with_columns(prompt=df["prompt"].fill_null(""))
        hits: list[dict] = []
        if s["ngram"]:
            t = time.perf_counter()
            hits += _ngram_rows(work, self.lookups, s)
            self._took("ngram_s", t)
        near = None
        if s["embedding"]:
            t = time.perf_counter()
            caught = {h["row"] for h in hits}
            left = [i for i in range(df.height) if i not in caught]
            emb_hits, near = _embedding_rows(work, left, self.suite_df, self.suite_emb, s, self.model, self.memo)
            hits += emb_hits
            self._took("embedding_s", t)

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
        self._tally(df, removed, removed_idx, near)
        self._took("total_s", t0)
        log.info("decontaminate: %d rows filtered, %d removed so far", self.rows_in, self.rows_in - self.kept)
        return kept, removed

    def _tally(self, df: pl.DataFrame, removed: pl.DataFrame, removed_idx: list[int], near) -> None:
        """What the report needs from one batch: counts, examples (the first ``examples`` rows
        of each benchmark and method, in corpus order), near misses (the ``near_misses`` kept
        rows with the highest cosine below the threshold; ties in corpus order)."""
        s, prompts, offset = self.s, df["prompt"], self.rows_in
        for row, r in zip(removed_idx, removed.iter_rows(named=True)):
            key = (r["benchmark"], r["method"])
            self.counts[key] += 1
            examples = self.examples.setdefault(key, [])
            if len(examples) < s["examples"]:
                examples.append({"id": r["id"], "benchmark": key[0], "method": key[1],
                                 "benchmark_item_id": r["benchmark_item_id"], "evidence": json.loads(r["evidence"]),
                                 "prompt": (prompts[row] or "")[:300],
                                 "benchmark_text": self.item_text.get((key[0], r["benchmark_item_id"]), "")[:300]})
        if near is not None and near.height:
            below = near.filter(pl.col("cosine") < s["cosine_threshold"])
            below = below.sort("cosine", descending=True, maintain_order=True).head(s["near_misses"])
            for r in below.iter_rows(named=True):
                self.near.append((-r["cosine"], offset + r["row"], {
                    "id": df["id"][r["row"]], "benchmark": r["suite"], "benchmark_item_id": r["item_id"],
                    "cosine": round(r["cosine"], 4), "prompt": (prompts[r["row"]] or "")[:300]}))
            self.near = sorted(self.near, key=lambda n: n[:2])[: s["near_misses"]]
        self.rows_in += df.height
        self.kept += df.height - removed.height

    def report(self) -> dict:
        """JSON-able: counts per benchmark and method, examples, near misses, suites, settings,
        timings (summed over the batches so far)."""
        s = self.s
        counts = sorted(self.counts.items())  # by benchmark, then method
        by_bench: dict = {}
        for (bench, method), n in counts:
            by_bench.setdefault(bench, {})[method] = n
        size = self.suite_df.group_by("suite").len()
        sizes = dict(zip(size["suite"].to_list(), size["len"].to_list()))
        return {
            "stage": STAGE,
            "rows_in": self.rows_in,
            "kept": self.kept,
            "removed": self.rows_in - self.kept,
            "counts": [{"benchmark": b, "method": m, "count": n} for (b, m), n in counts],
            "by_benchmark": by_bench,
            "by_method": {m: sum(n for (_, mm), n in counts if mm == m) for m in ("ngram", "embedding")},
            "examples": [e for group in self.examples.values() for e in group],
            "near_misses": [entry for *_, entry in self.near],
            "suites": [{"name": sp.name, "source": sp.path or sp.hub_id, "items": sizes.get(sp.name, 0),
                        "normaliser": sp.normaliser} for sp in self.specs],
            "settings": json.loads(json.dumps(s, default=str)),  # Paths in specs -> str
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            # distinct prompts per batch: embedded now, or their nearest item read from the cache
            "embedded_prompts": {"encoded": self.memo.encoded, "reused": self.memo.reused} if self.memo else None,
        }


def decontaminate(df: pl.DataFrame, settings: dict | None = None, *, model=None):
    """Split ``df`` (columns ``id, source, prompt, response, answer``) into kept / removed.

    Returns ``(kept_df, removed_df, report)``: ``kept_df`` has ``df``'s columns and row
    order; ``removed_df`` has ``REMOVED_SCHEMA``; ``report`` is JSON-able (counts per
    benchmark and method, examples, near misses, suites, settings, timings). ``model``:
    an already loaded SentenceTransformer (else ``settings["embedding_model"]``).
    The whole frame is one batch of a ``Decontaminator``; the stage streams its input.
    """
    _check_columns(df.columns)
    with Decontaminator(settings, model=model) as filt:
        kept, removed = filt.filter(df)
    log.info("decontaminate: %d rows -> %d kept, %d removed", df.height, kept.height, removed.height)
    return kept, removed, filt.report()
