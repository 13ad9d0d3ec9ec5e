"""Data plane: peak memory of score merge + features + selection, and bytes per token of the
score files, as the corpus grows. The stages and files are the real ones; only the model is
replaced (SYNTHETIC per-token entropies, no forward pass).

For every code version (``--code DIR``: a checkout, e.g. ``git worktree add /tmp/baseline REV``)
and every row count, two fresh child processes run that checkout's own code:

1. prepare: a length-capped samples table, then the real ``score_plan`` + ``score_shard``
   with ``score_frame`` swapped for a synthetic scorer: per row, T response tokens (uniform in
   [0.5, 1.5] x ``--tokens``) with entropies drawn from a gamma(0.5, 1) distribution in bits
   (many confident tokens, a tail of uncertain ones: SYNTHETIC, not a model's), summaries from
   the real ``undercurve.eas.scores``; probe mode adds ``--suffix`` suffix positions per token.
2. measure: ``score_merge`` -> ``features_stage`` -> ``select_stage`` x strategies, reading
   peak RSS (``ru_maxrss``) after each stage and RSS after imports (the floor).

Usage (the results in benchmarks/results/data_plane.md):
    git worktree add --detach /tmp/dp-before <rev before>; git worktree add --detach /tmp/dp-after <rev after>
    .venv/bin/python benchmarks/bench_data_plane.py --code /tmp/dp-before /tmp/dp-after --rows 1000 8000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

STRATEGIES = ["random", "length", "eas"]


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _context(workdir: Path, args: dict, extra: dict | None = None):
    """A run of configs/demo.yaml in ``workdir``; ``extra``: more dotted overrides
    (``benchmarks/bench_scale.py`` adds its decontamination suite, cap and run name)."""
    from undercurve.config import load_settings
    from undercurve.registry import Registry
    from undercurve.run import RunContext

    settings = load_settings("configs/demo.yaml", {
        "workdir": str(workdir), "scoring.mode": args["mode"], "scoring.shard_size": args["shard_size"],
        "pass_rate.enabled": False, "selection.strategies": STRATEGIES, "selection.budget": args["budget"],
        **(extra or {})})
    reg = Registry(settings.registry_path, create=True)
    return RunContext(settings, reg.start_run("curate", "bench", {}, "h"), str(settings.registry_path))


def _synthetic_T(sid: str, tokens: int) -> int:
    """``args["tokens_from_id"]``: a row's synthetic response length, uniform in
    [0.5, 1.5] x ``tokens`` and fixed by its id (when ``chat_tokens`` is a real tokenizer's count)."""
    return tokens // 2 + zlib.crc32(b"T" + sid.encode()) % (tokens + 1)


def _synthetic_score_frame(args: dict):
    """A stand-in for ``score_frame`` with the real output schema of the checkout it runs in.
    Plain mode builds the float32 lists from one flat array per shard (the same values as
    the row-by-row path, which 1M rows x 2,000 tokens made too slow); ``entropy`` (the derived
    curve, dropped before storage) is left null there. With ``tokens_from_id`` (bench_scale)
    a shard's entropies are one float32 gamma(0.5) draw and log-probabilities are -H (PPL only):
    cheaper, the same distribution of entropies, other values."""
    import numpy as np
    import polars as pl

    from undercurve import eas
    from undercurve.scoring import score

    def n_tokens(df) -> list[int]:
        # score shards carry only what scoring reads (no chat_tokens): a row's length is fixed
        # by its id, and ``prepare`` writes the same lengths as the samples' chat_tokens
        if args.get("tokens_from_id") or "chat_tokens" not in df.columns:
            return [_synthetic_T(sid, args["tokens"]) for sid in df["id"]]
        return [int(n) for n in df["chat_tokens"]]

    def plain_frame(df):
        import pyarrow as pa

        Ts = np.array(n_tokens(df), np.int64)
        offsets = np.zeros(len(Ts) + 1, np.int64)
        np.cumsum(Ts, out=offsets[1:])
        flat = np.empty(int(offsets[-1]), np.float32)
        rows = []
        if args.get("tokens_from_id"):  # bench_scale: one draw per shard (1M rows x 2,000 tokens)
            rng = np.random.default_rng(zlib.crc32(df["id"][0].encode()) if df.height else 0)
            flat = rng.standard_gamma(0.5, int(offsets[-1]), dtype=np.float32)  # SYNTHETIC, bits
            for sid, T, a in zip(df["id"], Ts.tolist(), offsets[:-1].tolist()):
                plain = flat[a: a + T].astype(np.float64)
                rows.append({"id": sid, "T": T, "response_tokens": T,  # logprobs = -H: synthetic, for PPL only
                             **eas.scores(plain[: T - 1], plain, -plain, eas.EdisParams(), exact=True)})
        for i, (sid, T) in enumerate(zip(df["id"], Ts.tolist()) if not args.get("tokens_from_id") else ()):
            rng = np.random.default_rng(zlib.crc32(sid.encode()))
            plain = rng.gamma(0.5, 1.0, T)  # SYNTHETIC entropies, bits
            logprobs = -rng.gamma(0.5, 1.0, T)
            rows.append({"id": sid, "T": T, "response_tokens": T,
                         **eas.scores(plain[: T - 1], plain, logprobs, eas.EdisParams(), exact=True)})
            flat[offsets[i]: offsets[i + 1]] = plain
        lists = pl.from_arrow(pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)))
        out = pl.DataFrame(rows).with_columns(pl.lit("torch").alias("engine"), pl.lit("plain").alias("mode"),
                                              lists.alias("plain_entropy"))
        return out.select([(pl.col(c) if c in out.columns else pl.lit(None)).cast(t).alias(c)
                           for c, t in score.SCORE_SCHEMA.items()])

    def score_frame(df, settings, scorer=None):
        if args["mode"] == "plain":
            return plain_frame(df), []
        rows = []
        for sid, n in zip(df["id"], n_tokens(df)):
            rng = np.random.default_rng(zlib.crc32(sid.encode()))
            T = int(n)
            plain = rng.gamma(0.5, 1.0, T)  # SYNTHETIC entropies, bits
            suffix = rng.gamma(0.5, 1.0, (T - 1, args["suffix"])) if args["mode"] == "probe" else None
            H = suffix[:, -1] if suffix is not None else plain[: T - 1]
            logprobs = -rng.gamma(0.5, 1.0, T)
            rows.append({"id": sid, "engine": "torch", "mode": args["mode"], "T": T, "response_tokens": T,
                         **eas.scores(H, plain, logprobs, eas.EdisParams(), exact=True),
                         "topk_mass_mean": None, "topk_mass_min": None, "topk_bound": None,
                         "entropy": H.tolist(), "plain_entropy": plain.tolist(),
                         "suffix_entropy": suffix.tolist() if suffix is not None else None})
        return pl.DataFrame(rows, schema=score.SCORE_SCHEMA), []

    return score_frame


def prepare(workdir: Path, args: dict) -> dict:
    import polars as pl

    from undercurve import stages
    from undercurve.io import write_parquet_atomic
    from undercurve.scoring import score

    ctx = _context(workdir, args)
    n = args["rows"]
    ids = [f"s{i:08d}" for i in range(n)]
    tokens = [_synthetic_T(sid, args["tokens"]) for sid in ids]  # uniform in [0.5, 1.5] x tokens
    samples = pl.DataFrame({
        "id": ids, "source": "bench",
        "prompt": [f"Question {i}: what is {i} + {i}?" for i in range(n)],
        "response": [f"<think>{i} + {i} = {2 * i}</think> The answer is \\boxed{{{2 * i}}}." for i in range(n)],
        "answer": [str(2 * i) for i in range(n)], "answer_source": "field", "chat_tokens": tokens})
    path = write_parquet_atomic(samples, ctx.stage_dir("length_cap") / "samples.parquet")
    prev = stages.StageResult("length_cap", str(path), "bench", n, n)
    score.score_frame = _synthetic_score_frame(args)
    # the module that calls _torch_scorer: undercurve/stages/score.py since the package split
    sys.modules.get("undercurve.stages.score", stages)._torch_scorer = lambda key: None  # no model
    t0 = time.perf_counter()
    shards = stages.score_plan(ctx, prev, "synthetic")
    for s in shards:
        stages.score_shard(ctx, s, "synthetic")
    return {"prepare_s": time.perf_counter() - t0, "response_tokens": sum(tokens)}


def measure(workdir: Path, args: dict) -> dict:
    import polars as pl

    from undercurve import stages
    from undercurve.io import Shard

    ctx = _context(workdir, args)
    import undercurve

    out = {"floor_mib": _rss_mib(), "undercurve": undercurve.__file__}
    samples_path = ctx.run_dir / "length_cap" / "samples.parquet"
    n = args["rows"]
    prev = stages.StageResult("length_cap", str(samples_path), "bench", n, n)
    shards = stages.score_plan(ctx, prev, "synthetic")  # the same shards (inputs unchanged): no rescoring
    assert all(isinstance(s, Shard) for s in shards)
    t0 = time.perf_counter()
    scores = stages.score_merge(ctx, prev, shards, "synthetic")
    out["merge_s"], out["peak_after_merge_mib"] = time.perf_counter() - t0, _peak_mib()
    t0 = time.perf_counter()
    feats = stages.features_stage(ctx, prev, scores, None)
    out["features_s"], out["peak_after_features_mib"] = time.perf_counter() - t0, _peak_mib()
    t0 = time.perf_counter()
    for s in STRATEGIES:
        stages.select_stage(ctx, feats, prev, s)
    out["select_s"], out["peak_mib"] = time.perf_counter() - t0, _peak_mib()
    out["features_list_columns"] = [c for c, t in pl.read_parquet_schema(feats.path).items() if isinstance(t, pl.List)]
    out.update(_disk(ctx.run_dir / "score", ctx.settings.cache_dir / "score"))
    return out


def _disk(score_dir: Path, cache_dir: Path | None = None) -> dict:
    """Bytes of the score files: shard outputs (the resumable cache: ``shard-*`` in ``score/``
    before the content-keyed cache, ``part-*`` in ``cache_dir`` since), per-token parts, and
    the merged table(s) in ``score/`` (inputs, keys and set-aside rows left out)."""
    roots = [score_dir] + ([cache_dir] if cache_dir is not None and cache_dir.is_dir() else [])
    files = [p for r in roots for p in r.rglob("*.parquet")
             if not p.name.startswith(("input-", ".", "set_aside", "pending", "keys"))]

    def size(pred) -> int:
        return sum(p.stat().st_size for p in files if pred(p))

    return {"score_bytes": size(lambda p: True),
            "shard_bytes": size(lambda p: p.name.startswith(("shard-", "part-"))),
            "entropies_part_bytes": size(lambda p: p.name.startswith("entropies-") or p.name.endswith(".entropies.parquet")),
            "merged_scores_bytes": size(lambda p: p.parent == score_dir)}


def child(code: Path, phase: str, workdir: Path, args: dict, script: str = __file__) -> dict:
    """Run ``phase`` of ``script`` (``--child PHASE WORKDIR ARGS``) in a fresh process; its last
    stdout line (JSON) back."""
    env = {**os.environ, "PYTHONPATH": str(code), "POLARS_MAX_THREADS": str(args["threads"])}
    cmd = [sys.executable, script, "--child", phase, str(workdir), json.dumps(args)]
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{phase} in {code} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(phases: dict) -> bool:
    """The child side of ``child``: when this process was started as ``--child PHASE WORKDIR
    ARGS``, run that phase against the checkout under test, print its JSON and return True."""
    if len(sys.argv) < 2 or sys.argv[1] != "--child":
        return False
    phase, workdir, args = sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
    sys.path.insert(0, os.getcwd())  # the checkout under test, before this file's own folder
    print(json.dumps(phases[phase](workdir, args)))
    return True


def git_rev(code: Path) -> str:
    return subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", nargs="+", type=Path, default=[Path(__file__).resolve().parent.parent],
                    help="checkouts to compare (default: this one)")
    ap.add_argument("--rows", nargs="+", type=int, default=[1000, 8000])
    ap.add_argument("--tokens", type=int, default=2000, help="mean response tokens per row")
    ap.add_argument("--mode", choices=["plain", "probe"], default="plain")
    ap.add_argument("--suffix", type=int, default=3, help="probe suffix positions per token")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2, help="POLARS_MAX_THREADS of the children")
    ap.add_argument("--keep", type=Path, help="keep the run folders here")
    ap.add_argument("--summary", type=Path, help="also write the measurements as JSON here (bench_targets.py)")
    a = ap.parse_args()
    results = []
    base = a.keep or Path(tempfile.mkdtemp(prefix="bench-data-plane-"))
    for code in a.code:
        for n in a.rows:
            args = {"rows": n, "tokens": a.tokens, "mode": a.mode, "suffix": a.suffix, "shard_size": a.shard_size,
                    "budget": a.budget, "threads": a.threads}
            workdir = base / f"{code.name}-{a.mode}-{n}"
            prep = child(code.resolve(), "prepare", workdir, args)
            res = {"code": str(code), "rev": git_rev(code), **args, **prep,
                   **child(code.resolve(), "measure", workdir, args)}
            res["score_bytes_per_token"] = res["score_bytes"] / res["response_tokens"]
            res["entropies_bytes_per_token"] = (res["entropies_part_bytes"] or res["merged_scores_bytes"]) / res["response_tokens"]
            results.append(res)
            print(json.dumps(res), flush=True)
            if not a.keep:
                subprocess.run(["rm", "-rf", str(workdir)], check=False)
    print()
    print("| code (rev) | mode | rows | response tokens | floor MiB | peak after merge | after features | peak (merge+features+select) | peak - floor | merge s | features s | select s | score files B/token | per-token table B/token |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {Path(r['code']).name} ({r['rev']}) | {r['mode']} | {r['rows']} | {r['response_tokens']:,} | {r['floor_mib']:.0f} | "
              f"{r['peak_after_merge_mib']:.0f} | {r['peak_after_features_mib']:.0f} | {r['peak_mib']:.0f} | "
              f"{r['peak_mib'] - r['floor_mib']:.0f} | {r['merge_s']:.2f} | {r['features_s']:.2f} | {r['select_s']:.2f} | "
              f"{r['score_bytes_per_token']:.2f} | {r['entropies_bytes_per_token']:.2f} |")
    print()
    for code in a.code:  # the targets beside what was measured
        rs = sorted((r for r in results if r["code"] == str(code)), key=lambda r: r["rows"])
        growth = (rs[-1]["peak_mib"] - rs[-1]["floor_mib"]) - (rs[0]["peak_mib"] - rs[0]["floor_mib"])
        bpt = max(r["score_bytes_per_token"] for r in rs)
        print(f"{code.name}: memory growth {rs[0]['rows']} -> {rs[-1]['rows']} rows {growth:+.0f} MiB (target <= 100 MB); "
              f"score files {bpt:.2f} B/token, {a.mode} mode (target <= 4)")
    if a.summary:
        a.summary.write_text(json.dumps(results))


if __name__ == "__main__":
    if not child_main({"prepare": prepare, "measure": measure}):
        main()
