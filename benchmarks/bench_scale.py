"""Data plane at scale: every non-model stage on a generated corpus (issue #15 targets).

1. ``--rows 1000000``: the real stages in order, each in a fresh child process (peak RSS =
   that process's ``ru_maxrss``; floor = its VmRSS after imports, before the stage): ingest
   (a JSONL file), decontaminate (13-gram, against a small local benchmark file), length cap
   (the tiny model's real fast tokenizer, ``undercurve/tiny_model.py``), score_plan,
   score_shard x N (the model replaced by ``bench_data_plane``'s SYNTHETIC scorer: ~2,000
   float32 per-token entropies per row, plain mode), score_merge, features, select + export
   for random, length and eas. Target: every data-plane stage within 2 GiB peak RSS.
2. ``--floor``: the non-model stages (ingest, decontaminate, length cap, features, select +
   export) against a hand-written Polars streaming floor doing the same logical work on the
   same files, each timed in its own fresh child. Target: stage / floor <= 1.0.

The texts are short (a prompt of 40-90 words from ``bench_decontam``'s templates, a one-line
worked answer with a boxed number; ~100-150 tokenizer tokens); the ~2,000 tokens per row are
the synthetic per-token entropies only. Planted: ~0.1 % of prompts copy a benchmark item
(decontamination sets them aside), ~0.1 % of responses are long (length cap), ~0.01 % of
lines lack a response (ingest).

    .venv/bin/python benchmarks/bench_scale.py --code /tmp/bs-code --rows 100000 --floor
    .venv/bin/python benchmarks/bench_scale.py --code /tmp/bs-code --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_data_plane import (STRATEGIES, _context, _peak_mib, _rss_mib, _synthetic_score_frame, child,  # noqa: E402
                              child_main, git_rev)

RUN = "scale"
STAGES = ["ingest", "decontaminate", "length_cap", "score_plan", "score_shards", "score_merge", "features",
          *(f"select:{s}" for s in STRATEGIES)]
NON_MODEL = ["ingest", "decontaminate", "length_cap", "features", "select"]  # compared with the floor
DATA_PLANE = [s for s in STAGES if s != "score_shards"]  # score_shards stands in for the model


def _extra(workdir: Path, args: dict) -> dict:
    return {"run_name": args.get("run", RUN), "max_tokens": args["cap"], "corpus.source": str(workdir / "corpus.jsonl"),
            "decontam.suites": [{"name": "bench", "path": str(workdir / "benchmark.jsonl"), "text_field": "problem",
                                 "id_field": "id"}],
            "decontam.embedding": False, "decontam.ngram_n": 13}


def _ctx(workdir: Path, args: dict):
    return _context(workdir, args, _extra(workdir, args))


# what the stages (and the floor) import lazily, inside the timed call
WARM = ("datasets", "transformers", "undercurve.decontam", "undercurve.export", "undercurve.ingest",
        "undercurve.strategies", "undercurve.textlen", "undercurve.scoring.score")


def _warm(args: dict) -> None:
    """``--warm-imports``: import what a stage imports lazily before its clock starts, as in
    a curate run, where one process pays for ``datasets`` or ``transformers`` once, not per stage."""
    if args.get("warm"):
        import importlib

        for m in WARM:
            importlib.import_module(m)
        from transformers import AutoTokenizer  # noqa: F401 (transformers' own lazy import)


# ---------------------------------------------------------------------------- inputs
def write_corpus(workdir: Path, rows: int, bench_items: int):
    """corpus.jsonl (canonical prompt/response/answer records) and benchmark.jsonl; returns the
    corpus frame and the first 3,000 texts (prompt + response) the tiny model's tokenizer learns."""
    import random

    import polars as pl

    from bench_decontam import suite_items, synth

    rnd = random.Random(1)
    bench = suite_items(bench_items)
    prompts = synth(rows, seed=0)
    answers = [rnd.randint(1, 10_000) for _ in range(rows)]
    responses = [f"<think>Work it out step by step: {p[:80]} ... so the total is {a}.</think> "
                 f"The answer is $\\boxed{{{a}}}$." for p, a in zip(prompts, answers)]
    for i in range(0, rows, 997):  # contaminated: a benchmark item verbatim
        prompts[i] = bench[i % len(bench)]
    for i in range(500, rows, 1009):  # over the length cap
        responses[i] = "<think>" + "and then we add the next number " * 200 + f"</think> $\\boxed{{{answers[i]}}}$"
    df = pl.DataFrame({"id": [f"r{i:08d}" for i in range(rows)], "prompt": prompts, "response": responses,
                       "answer": [str(a) for a in answers]})
    df = df.with_columns(pl.when(pl.int_range(pl.len()) % 10_007 == 77).then(None).otherwise(pl.col("response"))
                         .alias("response"))  # a record without a response: set aside at ingest
    workdir.mkdir(parents=True, exist_ok=True)
    df.write_ndjson(workdir / "corpus.jsonl")
    pl.DataFrame({"id": [f"b{i}" for i in range(len(bench))], "problem": bench}).write_ndjson(workdir / "benchmark.jsonl")
    return df, [p + " " + r for p, r in zip(prompts[:3000], responses[:3000])]


def generate(workdir: Path, args: dict) -> dict:
    """corpus.jsonl, benchmark.jsonl (``write_corpus``) and the tiny model."""
    from undercurve.tiny_model import build_tiny_qwen2

    df, texts = write_corpus(workdir, args["rows"], args["bench_items"])
    model = build_tiny_qwen2(workdir / "models" / "tiny-qwen2", texts)
    return {"corpus_bytes": (workdir / "corpus.jsonl").stat().st_size, "model": str(model),
            "mean_prompt_chars": df["prompt"].str.len_chars().mean(),
            "mean_response_chars": df["response"].str.len_chars().mean()}


# ---------------------------------------------------------------------------- the real stages
def _state(workdir: Path) -> dict:
    p = workdir / "state.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _save(workdir: Path, key: str, value) -> None:
    st = _state(workdir)
    st[key] = value
    (workdir / "state.json").write_text(json.dumps(st))


def stage(workdir: Path, args: dict) -> dict:
    """One real stage (``args["stage"]``) in this fresh process: floor, wall, peak."""
    from undercurve import stages
    from undercurve.io import Shard
    from undercurve.scoring import score

    name = args["stage"]
    ctx = _ctx(workdir, args)
    st = _state(workdir)
    res = lambda key: stages.StageResult(**st[key])  # noqa: E731
    model = str(workdir / "models" / "tiny-qwen2")
    _warm(args)
    out = {"floor_mib": _rss_mib()}
    t0 = time.perf_counter()
    if name == "ingest":
        r = stages.ingest_stage(ctx, str(workdir / "corpus.jsonl"))
    elif name == "decontaminate":
        r = stages.decontaminate_stage(ctx, res("ingest"), None)
    elif name == "length_cap":
        r = stages.length_cap_stage(ctx, res("decontaminate"), model)
    elif name == "score_plan":
        shards = stages.score_plan(ctx, res("length_cap"), "synthetic")
        _save(workdir, "shards", [s.__dict__ for s in shards])
        r = None
        out["shards"] = len(shards)
    elif name == "score_shards":  # the model stage, SYNTHETIC entropies
        score.score_frame = _synthetic_score_frame(args)
        sys.modules["undercurve.stages.score"]._torch_scorer = lambda key: None  # no model
        for s in st["shards"]:
            stages.score_shard(ctx, Shard(**s), "synthetic")
        r = None
    elif name == "score_merge":
        r = stages.score_merge(ctx, res("length_cap"), [Shard(**s) for s in st["shards"]], "synthetic")
    elif name == "features":
        r = stages.features_stage(ctx, res("length_cap"), res("score_merge"), None)
    elif name.startswith("select:"):
        r = stages.select_stage(ctx, res("features"), res("length_cap"), name.split(":", 1)[1])
    else:
        raise ValueError(name)
    out["wall_s"], out["peak_mib"] = time.perf_counter() - t0, _peak_mib()
    if r is not None:
        d = r.as_dict()
        d["extra"] = {}  # reports are large; the next stage needs path, artifact and rows only
        _save(workdir, name, d)
        out.update(rows_in=r.rows_in, rows_out=r.rows_out, set_aside=r.set_aside)
    return out


# ---------------------------------------------------------------------------- the floor
def floor(workdir: Path, args: dict) -> dict:
    """The same logical work, hand-written with Polars lazy frames (streaming engine), on the
    same inputs as the real stage; outputs under ``floor/``."""
    import polars as pl

    from undercurve.decontam.suites import NORMALISERS

    name, st = args["stage"], _state(workdir)
    f = workdir / "floor"
    f.mkdir(exist_ok=True)
    go = dict(engine="streaming")
    _warm(args)
    out = {"floor_mib": _rss_mib()}
    t0 = time.perf_counter()
    if name == "ingest":  # JSONL -> canonical columns; rows without text or a boxed answer set aside
        text = lambda c: pl.col(c).str.strip_chars()  # noqa: E731
        boxed = pl.col("response").str.extract_all(r"\\boxed\{([^{}]*)\}").list.last().str.slice(7).str.strip_suffix("}")
        lf = (pl.scan_ndjson(workdir / "corpus.jsonl", schema={"id": pl.Utf8, "prompt": pl.Utf8, "response": pl.Utf8,
                                                               "answer": pl.Utf8})
              .with_columns(text("prompt"), text("response"), text("answer"), pl.lit("corpus.jsonl").alias("source"))
              .with_columns(pl.coalesce(pl.col("answer"), boxed).alias("answer"),
                            pl.when(pl.col("answer").is_not_null()).then(pl.lit("field"))
                            .otherwise(pl.lit("response_boxed")).alias("answer_source")))
        ok = (pl.col("prompt").str.len_chars() > 0) & (pl.col("response").str.len_chars() > 0) & boxed.is_not_null()
        pl.collect_all([
            lf.filter(ok.fill_null(False)).select("id", "source", "prompt", "response", "answer", "answer_source")
            .sink_parquet(f / "ingest.parquet", lazy=True),
            lf.filter(~ok.fill_null(False)).select("id", "source", pl.lit("ingest").alias("stage"),
                                                   pl.lit("missing or empty response").alias("reason"))
            .sink_parquet(f / "ingest_aside.parquet", lazy=True)], **go)
        rows = pl.scan_parquet(f / "ingest.parquet").select(pl.len()).collect().item()
    elif name == "decontaminate":  # the 13-gram containment check: corpus grams semi-joined to the benchmark's
        n, norm = 13, NORMALISERS["latex"]

        def grams(lf: pl.LazyFrame, text: str) -> pl.LazyFrame:
            toks = lf.select("id", norm(pl.col(text)).alias("t")).explode("t").with_columns(pl.col("t").hash(0).alias("h"))
            return (toks.with_columns(*(pl.col("h").shift(-j).alias(f"h{j}") for j in range(1, n)),
                                      pl.col("id").shift(-(n - 1)).alias("last"))
                    .filter(pl.col("last") == pl.col("id"))
                    .select("id", pl.struct("h", *(f"h{j}" for j in range(1, n))).hash(0).alias("g")))

        bench = grams(pl.scan_ndjson(workdir / "benchmark.jsonl"), "problem").select("g").unique()
        corpus = pl.scan_parquet(st["ingest"]["path"])
        hit = grams(corpus, "prompt").join(bench, on="g", how="semi").select("id").unique()
        pl.collect_all([corpus.join(hit, on="id", how="anti", maintain_order="left").sink_parquet(f / "decontam.parquet", lazy=True),
                        corpus.join(hit, on="id", how="semi").select("id", "source", pl.lit("contamination:ngram").alias("reason"))
                        .sink_parquet(f / "decontam_aside.parquet", lazy=True)], **go)
        rows = pl.scan_parquet(f / "decontam.parquet").select(pl.len()).collect().item()
    elif name == "length_cap":  # the chat template as a string expression, the same tokenizer call, the cap
        from transformers import AutoTokenizer

        from undercurve.textlen import counter  # the stage's own count: the Rust backend, lengths only

        count = counter(AutoTokenizer.from_pretrained(str(workdir / "models" / "tiny-qwen2")))

        def lengths(s: pl.Series) -> pl.Series:
            return pl.Series(count(s.to_list()), dtype=pl.Int64)

        chat = pl.concat_str(pl.lit("<|im_start|>user\n"), "prompt", pl.lit("<|im_end|>\n<|im_start|>assistant\n"),
                             "response", pl.lit("<|im_end|>\n"))
        lf = pl.scan_parquet(st["decontaminate"]["path"]).with_columns(
            chat.map_batches(lengths, return_dtype=pl.Int64, is_elementwise=True).alias("chat_tokens"))
        lf.sink_parquet(f / "tokens.parquet", **go)  # tokenised once, then split by the cap
        lf = pl.scan_parquet(f / "tokens.parquet")
        pl.collect_all([lf.filter(pl.col("chat_tokens") <= args["cap"]).sink_parquet(f / "length.parquet", lazy=True),
                        lf.filter(pl.col("chat_tokens") > args["cap"]).select("id", "source", "chat_tokens")
                        .sink_parquet(f / "length_aside.parquet", lazy=True)], **go)
        (f / "tokens.parquet").unlink()
        rows = pl.scan_parquet(f / "length.parquet").select(pl.len()).collect().item()
        real = pl.scan_parquet(st["length_cap"]["path"]).select(pl.col("chat_tokens").sum()).collect().item()
        mine = pl.scan_parquet(f / "length.parquet").select(pl.col("chat_tokens").sum()).collect().item()
        out["same_token_counts"] = real == mine
    elif name == "features":
        from undercurve.strategies import SCORE_COLUMNS

        (pl.scan_parquet(st["length_cap"]["path"]).select("id", "chat_tokens")
         .join(pl.scan_parquet(st["score_merge"]["path"]).select("id", *SCORE_COLUMNS), on="id", how="inner",
               maintain_order="left").sink_parquet(f / "features.parquet", **go))
        rows = pl.scan_parquet(f / "features.parquet").select(pl.len()).collect().item()
    elif name == "select":  # per strategy: top-k, the chosen rows only, selection Parquet + JSONL + dataset files
        feats = pl.read_parquet(st["features"]["path"])
        orders = {"random": (pl.col("id").hash(args["seed"]), False), "length": (pl.col("chat_tokens"), True),
                  "eas": (pl.col("eas"), True)}
        rows = 0
        for strat in STRATEGIES:
            by, desc = orders[strat]
            chosen = (feats.filter(pl.col("eas").is_not_nan()) if strat == "eas" else feats).with_columns(
                by.cast(pl.Float64).alias("score"), pl.col("id").hash(args["seed"]).alias("tie")).sort(
                ["score", "tie"], descending=[desc, False]).head(args["budget"]).with_row_index("rank", 1).select(
                "id", pl.lit(strat).alias("strategy"), pl.col("rank").cast(pl.Int64), "score")
            chosen.write_parquet(f / f"{strat}.parquet")
            sel = (pl.scan_parquet(st["length_cap"]["path"]).filter(pl.col("id").is_in(chosen["id"].implode()))
                   .collect(**go).join(chosen, on="id").sort("rank")
                   .with_columns(pl.concat_list(pl.struct(role=pl.lit("user"), content="prompt"),
                                                pl.struct(role=pl.lit("assistant"), content="response")).alias("messages")))
            sel.select("messages").write_ndjson(f / f"{strat}.swift.jsonl")
            sel.write_parquet(f / f"{strat}.train.parquet")
            sel.write_ipc(f / f"{strat}.arrow")  # the dataset's Arrow copy (``datasets.save_to_disk``)
            rows += sel.height
    else:
        raise ValueError(name)
    out["wall_s"], out["peak_mib"], out["rows_out"] = time.perf_counter() - t0, _peak_mib(), rows
    return out


def profile(workdir: Path, args: dict) -> dict:
    """cProfile of one real stage (``args["stage"]``): the top functions by cumulative time."""
    import cProfile
    import io
    import pstats

    _warm(args)  # imports before the profiler starts (with --warm-imports)
    prof = cProfile.Profile()
    prof.enable()
    res = stage(workdir, {**args, "run": args.get("run", RUN) + "-profile"})
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(args.get("top", 40))
    (workdir / f"profile-{args['stage'].replace(':', '_')}.txt").write_text(buf.getvalue())
    return {**res, "profile": str(workdir / f"profile-{args['stage'].replace(':', '_')}.txt")}


# ---------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=Path, default=HERE.parent, help="the checkout under test (default: this one)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=2000, help="mean SYNTHETIC per-token entropies per row")
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--budget", type=int, default=5000)
    ap.add_argument("--cap", type=int, default=1024, help="max_tokens of the length cap")
    ap.add_argument("--bench-items", type=int, default=2100, help="benchmark items (13-gram index)")
    ap.add_argument("--threads", type=int, default=2, help="POLARS_MAX_THREADS of the children")
    ap.add_argument("--floor", action="store_true", help="also time the Polars floor of the non-model stages")
    ap.add_argument("--profile", nargs="*", default=[], help="stages to cProfile after the run (another fresh child)")
    ap.add_argument("--gib", type=float, default=2.0, help="the peak RSS target")
    ap.add_argument("--warm-imports", action="store_true",
                    help="import datasets, transformers and the lazily imported modules before each clock starts")
    ap.add_argument("--workdir", type=Path, help="default: a new folder under /tmp, removed at the end")
    ap.add_argument("--keep", action="store_true", help="keep the workdir")
    ap.add_argument("--summary", type=Path, help="also write the measurements as JSON here (bench_targets.py)")
    a = ap.parse_args()
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    code = a.code.resolve()
    args = {"rows": a.rows, "tokens": a.tokens, "tokens_from_id": True, "mode": "plain", "suffix": 0,
            "shard_size": a.shard_size, "budget": a.budget, "cap": a.cap, "bench_items": a.bench_items,
            "threads": a.threads, "seed": 0, "warm": a.warm_imports}
    run = lambda phase, **kw: child(code, phase, workdir, {**args, **kw}, script=__file__)  # noqa: E731
    load0 = os.getloadavg()
    print(f"# bench_scale: {a.rows:,} rows, code {code} ({git_rev(code)}), warm imports {a.warm_imports}, load {load0[0]:.2f} {load0[1]:.2f} "
          f"{load0[2]:.2f} on {os.cpu_count()} cores; workdir {workdir}", flush=True)
    t = time.perf_counter()
    gen = run("generate")
    print(f"generated in {time.perf_counter() - t:.1f} s: {json.dumps(gen)}", flush=True)
    real, floors = {}, {}
    for name in STAGES:
        real[name] = run("stage", stage=name)
        print(f"{name}: {json.dumps(real[name])}  load {os.getloadavg()[0]:.2f}", flush=True)
    disk = {"cache_bytes": _du(workdir / "cache" / "score"), "workdir_bytes": _du(workdir)}
    if a.floor:
        for name in NON_MODEL:
            floors[name] = run("floor", stage=name)
            print(f"floor {name}: {json.dumps(floors[name])}  load {os.getloadavg()[0]:.2f}", flush=True)
    profiles = {name: run("profile", stage=name) for name in a.profile}
    for name, p in profiles.items():
        print(f"\n## cProfile: {name} ({p['wall_s']:.1f} s under the profiler)\n\n```\n"
              + _trim(Path(p["profile"]).read_text()) + "```", flush=True)
    load1 = os.getloadavg()
    report(a, real, floors, disk, gen, load0, load1)
    if a.summary:
        a.summary.write_text(json.dumps({"rows": a.rows, "tokens": a.tokens, "gib": a.gib, "stages": real,
                                         "floors": floors, "data_plane": list(DATA_PLANE),
                                         "non_model": list(NON_MODEL), "disk": disk, "load": [load0, load1]}))
    if not a.keep:
        shutil.rmtree(workdir, ignore_errors=True)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _trim(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
    return "\n".join(lines[start:]) + "\n"


def report(a, real: dict, floors: dict, disk: dict, gen: dict, load0, load1) -> None:
    gib = a.gib * 1024
    print(f"\nload average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end (1-min), {os.cpu_count()} cores; "
          f"score cache on disk {disk['cache_bytes'] / 2**30:.2f} GiB, whole workdir {disk['workdir_bytes'] / 2**30:.2f} GiB")
    print(f"\n| stage ({a.rows:,} rows, each in a fresh process) | rows in -> out | wall s | floor MiB (imports) | "
          f"peak RSS MiB | peak - floor | within {a.gib:g} GiB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in real.items():
        rows = f"{r['rows_in']:,} -> {r['rows_out']:,}" if "rows_in" in r else ("" if "shards" not in r else f"{r['shards']} shards")
        label = name + (" (model stand-in: SYNTHETIC entropies)" if name == "score_shards" else "")
        print(f"| {label} | {rows} | {r['wall_s']:.1f} | {r['floor_mib']:.0f} | {r['peak_mib']:.0f} | "
              f"{r['peak_mib'] - r['floor_mib']:.0f} | {'yes' if r['peak_mib'] <= gib else 'NO'} |")
    worst = max(DATA_PLANE, key=lambda s: real[s]["peak_mib"])
    print(f"\nTarget 1 ({a.rows:,} rows, ~{a.tokens:,} SYNTHETIC entropies each, data plane within {a.gib:g} GiB peak RSS): "
          f"highest data-plane stage peak {real[worst]['peak_mib']:.0f} MiB ({worst}) -> "
          f"{'met' if real[worst]['peak_mib'] <= gib else 'NOT met'} at this row count"
          + ("" if a.rows >= 1_000_000 else " (below the target's 1M rows: not a claim for 1M)"))
    if floors:
        print(f"\n| non-model stage ({a.rows:,} rows) | stage s | Polars floor s | stage / floor | stage peak MiB | floor peak MiB |")
        print("|---|---|---|---|---|---|")
        tot_s = tot_f = 0.0
        for name in NON_MODEL:
            s = sum(r["wall_s"] for k, r in real.items() if k == name or k.startswith(name + ":"))
            peak = max(r["peak_mib"] for k, r in real.items() if k == name or k.startswith(name + ":"))
            fl = floors[name]
            tot_s, tot_f = tot_s + s, tot_f + fl["wall_s"]
            print(f"| {name}{' (3 strategies)' if name == 'select' else ''} | {s:.2f} | {fl['wall_s']:.2f} | "
                  f"{s / fl['wall_s']:.2f} | {peak:.0f} | {fl['peak_mib']:.0f} |")
        print(f"| **total** | {tot_s:.2f} | {tot_f:.2f} | **{tot_s / tot_f:.2f}** | | |")
        if "same_token_counts" in floors.get("length_cap", {}):
            print(f"\nlength cap floor: same token counts as the stage: {floors['length_cap']['same_token_counts']}")
        print(f"\nTarget 2 (non-model stages <= 1.0x a Polars streaming floor at {a.rows:,} rows): total "
              f"{tot_s / tot_f:.2f}x -> {'met' if tot_s <= tot_f else 'NOT met'}")


if __name__ == "__main__":
    if not child_main({"generate": generate, "stage": stage, "floor": floor, "profile": profile}):
        main()
