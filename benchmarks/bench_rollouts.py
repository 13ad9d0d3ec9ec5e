"""Rollout throughput of the two sampling backends on the demo's real model, one run.

    .venv/bin/python benchmarks/bench_rollouts.py [--prompts 16] [--n 4] [--max-tokens 64]
        [--backends hf vllm] [--vllm-timeout 900]

Both backends run the same worker job (``undercurve.vllm_worker``, one ``rollouts`` step) on
the same demo problems (undercurve.demo) with SmolLM2-135M-Instruct, as the pass-rate stage
does: hf in the main environment, vLLM in .venv-vllm. Reported: wall time of the job
(interpreter and engine start-up included, as a run pays it), the step's own time (engine
build included for vLLM: the step builds it lazily), generated tokens, tokens/s of the step,
share of samples that stopped on their own, pass rate (last-number fallback, as the demo). A backend
that does not finish within its timeout is reported as such. Appends to
benchmarks/results/rollouts.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--backends", nargs="+", default=["hf", "vllm"])
    ap.add_argument("--vllm-timeout", type=float, default=900)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    import polars as pl

    from undercurve.demo import INSTRUCTION, problem
    from undercurve.jobs import JobFailed
    from undercurve.models import resolve_model
    from undercurve.vllm_runtime import run_vllm_job

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-rollouts-"))
    model = resolve_model("smollm2", work / "models")
    rng = random.Random(0)
    rows = []
    for i in range(args.prompts):
        q, _, a = problem(i % 5, rng)
        rows.append({"id": f"p{i}", "prompt": f"{q} {INSTRUCTION}", "answer": str(a)})
    inp = work / "prompts.parquet"
    pl.DataFrame(rows).write_parquet(inp)

    lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, {os.cpu_count()} cores, "
             f"load {os.getloadavg()[0]:.1f}\n",
             f"`{' '.join([Path(sys.executable).name, *sys.argv])}`: SmolLM2-135M-Instruct, {args.prompts} demo problems "
             f"x {args.n} samples, max_tokens {args.max_tokens}, temperature 0.7, top_p 0.95\n",
             "| backend | job wall s (start-up included) | step s (generation) | tokens | tokens/s (step) | stopped | pass rate |",
             "|---|---|---|---|---|---|---|"]
    for backend in args.backends:
        out = work / backend
        out.mkdir(exist_ok=True)
        step = {"kind": "rollouts", "name": backend, "input": str(inp), "output": str(out / "rollouts.parquet"),
                "pass_rate_output": str(out / "pass_rate.parquet"), "n": args.n, "temperature": 0.7, "top_p": 0.95,
                "max_tokens": args.max_tokens, "seed": 0, "batch_size": args.prompts, "last_number_fallback": True}
        job = {"model": model, "engine": {"backend": backend, "seed": 0}, "steps": [step]}
        t0 = time.time()
        try:
            result = run_vllm_job(job, out, name="job", python=sys.executable if backend == "hf" else None,
                         timeout=args.vllm_timeout if backend == "vllm" else None)
        except JobFailed as exc:
            wall = time.time() - t0
            lines.append(f"| {backend} | > {wall:.0f} (did not finish: {str(exc).splitlines()[0][:80]}) | | | | | |")
            print(lines[-1], flush=True)
            continue
        wall = time.time() - t0
        ro = pl.read_parquet(step["output"])
        tokens = int(ro["response_tokens"].sum())
        stopped = float((ro["finish_reason"] == "stop").mean())
        step_s = result["steps"][0]["seconds"]
        lines.append(f"| {backend} | {wall:.1f} | {step_s:.1f} | {tokens} | {tokens / step_s:.1f} | {stopped:.0%} | "
                     f"{float(ro['correct'].mean()):.2f} |")
        print(lines[-1], flush=True)
    results = ROOT / "benchmarks" / "results" / "rollouts.md"
    if not results.exists():
        results.write_text("# Rollout throughput: transformers (hf) vs vLLM backends on CPU\n")
    with results.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    print(json.dumps({"results": str(results)}))


if __name__ == "__main__":
    main()
