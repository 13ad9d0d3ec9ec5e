"""Engines side by side, in ONE run, on ONE model and the same samples.

(1) probe (EAS) paths: torch one-pass probe vs torch one context per position (the naive
    reference, timed on a few evenly spaced positions and extrapolated) vs vLLM top-K probe
    (one request per position, ``max_tokens=1, logprobs=K``, prefix caching on);
(2) the cost of a selection signal per sample: EAS scoring (torch probe, torch plain, vLLM
    top-K plain/probe) vs pass-rate@4 (vLLM, 4 rollouts of ``max_tokens`` = the response
    length, which is what a real pass-rate run costs).

The model is a random Qwen2 written to a folder (hidden 256, 4 layers, 4 heads of dim 64 /
2 KV heads, vocab 32,000) with a byte-level BPE tokenizer trained on the fly to 32,000
tokens, so both engines load the same files. Samples are synthetic: a ~64-token prompt and a
response of about T tokens of random words ending in ``\\boxed{42}``. Torch runs in this
process; vLLM runs through ``undercurve.vllm_runtime.run_vllm_job`` (the ``.venv-vllm``
subprocess the pipeline uses), one job for all T, whose per-step ``seconds`` exclude the
engine start-up (a warm-up step pays it and is reported separately).

    .venv/bin/python benchmarks/bench_engines.py --T 500 1000 --samples 2 --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[500], help="response lengths (tokens)")
    ap.add_argument("--samples", type=int, default=2, help="samples per T")
    ap.add_argument("--prompt-words", type=int, default=40, help="~1.4 tokens per word + chat template")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64, help="vLLM CPU: 32, 64, 80, 96, 112 or 128")
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=32000, help="BPE tokenizer size = model vocab")
    ap.add_argument("--threads", type=int, default=1, help="torch threads here and OMP_NUM_THREADS for vLLM")
    ap.add_argument("--ref-positions", type=int, default=6, help="positions per sample timed for the reference")
    ap.add_argument("--repeats", type=int, default=2, help="torch timings: minimum of this many interleaved runs")
    ap.add_argument("--rollouts", type=int, default=4, help="pass-rate@n rollouts per sample")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--block-size", type=int, default=32, help="vLLM KV block size (CPU default 128)")
    ap.add_argument("--probe-batch", type=int, default=256)
    ap.add_argument("--workdir", help="model, samples and vLLM job files (default: a temp dir)")
    ap.add_argument("--skip-vllm", action="store_true")
    return ap.parse_args(argv)


# ---------------------------------------------------------------- load sampling
class LoadSampler:
    """1-minute load average every 5 s while the benchmark runs."""

    def __init__(self):
        self.values, self._stop = [os.getloadavg()[0]], threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self):
        while not self._stop.wait(5):
            self.values.append(os.getloadavg()[0])

    def stop(self) -> str:
        self._stop.set()
        v = self.values
        return f"min {min(v):.1f} / mean {sum(v) / len(v):.1f} / max {max(v):.1f} ({len(v)} samples, 1-min load avg)"


# ---------------------------------------------------------------- model and samples
SYLLABLES = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + ["th", "sh", "ch", "qu", "x"]


def lexicon(rng: random.Random, n: int = 60000) -> list[str]:
    def word():
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.choice([1, 2, 2, 3, 3, 4])))

    return sorted({word() for _ in range(n)})


def build_model(out: Path, args, rng: random.Random, lex: list[str]) -> Path:
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from undercurve.tiny_model import train_tokenizer

    texts = [" ".join(rng.choice(lex) for _ in range(50)) for _ in range(8000)]
    texts += ["The final answer is $\\boxed{42}$.", "Solve: 12 + 30 = ?"] * 50
    tok = train_tokenizer(texts, vocab_size=args.vocab)
    heads = args.hidden // args.head_dim
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, max_position_embeddings=32768, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), torch_dtype="float32",
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def make_samples(tok, lex: list[str], rng: random.Random, T: int, n: int, prompt_words: int) -> list[dict]:
    """n samples whose response is ~T tokens (random words, then the boxed answer)."""
    tail = " So the final answer is $\\boxed{42}$."
    n_tail = len(tok(tail, add_special_tokens=False)["input_ids"])
    out = []
    for i in range(n):
        body = " ".join(rng.choice(lex) for _ in range(T))  # > T tokens
        enc = tok(body, add_special_tokens=False, return_offsets_mapping=True)
        cut = enc["offset_mapping"][T - n_tail - 1][1]
        response = "<think>" + body[:cut] + tail
        prompt = "Solve: " + " ".join(rng.choice(lex) for _ in range(prompt_words)) + " ?"
        out.append({"id": f"T{T}-{i}", "source": "bench", "prompt": prompt, "response": response, "answer": "42"})
    return out


def tagged(samples: list[dict], tag: str) -> list[dict]:
    """Same samples, prompt starting with a different word: no vLLM prefix-cache hit across steps
    (a block hash covers everything before it), while lengths stay within a token or two."""
    return [{**s, "prompt": f"{tag} {s['prompt']}"} for s in samples]


# ---------------------------------------------------------------- torch
def time_torch(scorer, trajs, args) -> dict:
    from bench_torch_engine import reference_positions

    runs = {"plain": lambda: scorer.score(trajs, "plain"), "probe": lambda: scorer.score(trajs, "probe")}
    best = {k: math.inf for k in runs}
    for _ in range(args.repeats):  # interleaved: a noisy neighbour slows both alike
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    ref_total, ref_sub, ref_n = 0.0, 0.0, 0
    for tr in trajs:
        n = min(args.ref_positions, tr.T - 1)
        positions = [1 + round(i * (tr.T - 2) / max(1, n - 1)) for i in range(n)]  # spread over 1..T-1
        t0 = time.perf_counter()
        reference_positions(scorer, tr, positions)
        dt = time.perf_counter() - t0
        ref_sub, ref_n = ref_sub + dt, ref_n + n
        ref_total += dt / n * (tr.T - 1)  # mean time per position x (T-1) positions
    k = len(trajs)
    return {"plain": best["plain"] / k, "probe": best["probe"] / k, "ref": ref_total / k,
            "ref_note": f"{ref_n} positions took {ref_sub:.2f} s"}


# ---------------------------------------------------------------- vLLM
def run_vllm(model: Path, work: Path, groups: dict[int, list[dict]], args) -> tuple[dict, dict]:
    import polars as pl

    from undercurve.vllm_runtime import run_vllm_job

    def write(rows, name):
        p = work / f"{name}.parquet"
        pl.DataFrame(rows).write_parquet(p)
        return str(p)

    warm = [{"id": "warm", "source": "bench", "prompt": "Solve: 1 + 1 ?",
             "response": "<think> one plus one </think> So the answer is $\\boxed{2}$.", "answer": "2"}]
    wp = write(warm, "warm")
    steps = [
        {"kind": "score", "name": "warmup-score", "input": wp, "output": str(work / "warm_score.parquet"),
         "mode": "probe", "top_k": args.top_k, "probe_batch": args.probe_batch},
        {"kind": "rollouts", "name": "warmup-rollouts", "input": wp, "output": str(work / "warm_roll.parquet"),
         "n": args.rollouts, "max_tokens": 8, "temperature": 1.0, "seed": 0},
    ]
    for T, samples in groups.items():
        max_len = max(s["response_tokens"] for s in samples)
        clean = [{k: v for k, v in s.items() if k != "response_tokens"} for s in samples]
        steps += [
            {"kind": "rollouts", "name": f"rollouts-T{T}", "input": write(tagged(clean, "Rollout"), f"roll{T}"),
             "output": str(work / f"roll{T}_out.parquet"), "n": args.rollouts, "max_tokens": max_len,
             "temperature": 1.0, "seed": 0, "batch_size": 64},
            {"kind": "score", "name": f"probe-T{T}", "input": write(tagged(clean, "Probe"), f"probe{T}"),
             "output": str(work / f"probe{T}_out.parquet"), "mode": "probe", "top_k": args.top_k,
             "probe_batch": args.probe_batch},
            {"kind": "score", "name": f"plain-T{T}", "input": write(tagged(clean, "Plain"), f"plain{T}"),
             "output": str(work / f"plain{T}_out.parquet"), "mode": "plain", "top_k": args.top_k},
        ]
    for p in work.glob("*.fp"):  # always recompute
        p.unlink()
    job = {"model": str(model), "engine": {"seed": 0, "dtype": "float32", "enable_prefix_caching": True,
                                           "block_size": args.block_size, "max_logprobs": args.top_k},
           "steps": steps}
    env = {"OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    res = run_vllm_job(job, work, name="bench_job", env=env)
    wall = time.perf_counter() - t0
    log = (work / "bench_job.log").read_text()
    m = re.search(r"engine ready in ([\d.]+)s", log)
    secs = {s["name"]: s["seconds"] for s in res["steps"]}
    out = {}
    for T, samples in groups.items():
        n = len(samples)
        roll = pl.read_parquet(work / f"roll{T}_out.parquet")
        out[T] = {"rollouts": secs[f"rollouts-T{T}"] / n, "probe": secs[f"probe-T{T}"] / n,
                  "plain": secs[f"plain-T{T}"] / n, "gen_tokens": int(roll["response_tokens"].sum()) / n,
                  "max_tokens": max(s["response_tokens"] for s in samples),
                  "finish": dict(roll["finish_reason"].value_counts().iter_rows())}
    meta = {"wall": wall, "engine_start": float(m.group(1)) if m else float("nan"),
            "warmup": secs["warmup-score"] + secs["warmup-rollouts"], "log": str(work / "bench_job.log")}
    return out, meta


# ---------------------------------------------------------------- main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import polars as pl
    import torch
    from transformers import AutoTokenizer

    from undercurve.scoring.score import build_trajectories
    from undercurve.scoring.torch_engine import TorchScorer

    torch.set_num_threads(args.threads)
    load = LoadSampler()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lex = lexicon(rng)
    t0 = time.perf_counter()
    model_dir = build_model(work / "model", args, rng, lex)
    print(f"model folder {model_dir} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    groups: dict[int, list[dict]] = {}
    trajs: dict[int, list] = {}
    for T in args.T:
        samples = make_samples(tok, lex, rng, T, args.samples, args.prompt_words)
        tr, aside = build_trajectories(pl.DataFrame(tagged(samples, "Probe")), tok, 0)
        assert not aside, aside
        for s, t in zip(samples, tr):
            s["response_tokens"] = t.length
        groups[T], trajs[T] = samples, tr

    scorer = TorchScorer(str(model_dir), device="cpu", dtype="float32")
    scorer.score(trajs[args.T[0]][:1], "probe")  # warm-up
    torch_res = {}
    for T in args.T:
        torch_res[T] = time_torch(scorer, trajs[T], args)
        print(f"torch T={T}: {torch_res[T]}", file=sys.stderr)
    del scorer
    if args.skip_vllm:
        vres, vmeta = {T: {} for T in args.T}, {}
    else:
        vres, vmeta = run_vllm(model_dir, work, groups, args)
        print(f"vllm: {vres} {vmeta}", file=sys.stderr)
    load_txt = load.stop()

    V = len(tok)
    m = len(trajs[args.T[0]][0].suffix_ids)
    na = lambda d, k: d.get(k, float("nan"))  # noqa: E731
    lines = [
        "- command: `.venv/bin/python benchmarks/bench_engines.py " + " ".join(argv) + "`",
        f"- model: random Qwen2, hidden {args.hidden}, {args.layers} layers, {args.hidden // args.head_dim} heads "
        f"of dim {args.head_dim} / {args.kv_heads} KV heads, intermediate {args.intermediate}, vocab {V} "
        f"(byte-level BPE trained to {V}), fp32 in both engines",
        f"- samples: {args.samples} per T; prompt ~{len(trajs[args.T[0]][0].prompt_ids)} tokens (chat template), "
        f"response ~T tokens of random words ending in `\\boxed{{42}}`; suffix m = {m} tokens (`\\boxed{{`)",
        f"- torch {torch.__version__}, {args.threads} thread(s), in-process; times are the minimum of "
        f"{args.repeats} interleaved runs, divided by the samples (one `score()` call on all of them)",
        f"- vLLM: one `run_vllm_job` (`.venv-vllm`), OMP_NUM_THREADS={args.threads}, block_size {args.block_size}, "
        f"prefix caching on, top-K {args.top_k}, probe_batch {args.probe_batch}; per-step `seconds` from the worker "
        "result, engine start-up excluded (reported below)",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs; load during the run: {load_txt}",
        "",
    ]
    if vmeta:
        lines += [f"vLLM job: {vmeta['wall']:.1f} s wall in total; engine start-up {vmeta['engine_start']:.1f} s "
                  f"(`engine ready in` from the worker log), warm-up steps {vmeta['warmup']:.1f} s (start-up "
                  "included); the rows below exclude both.", ""]
    lines += [
        "## (1) Probe (EAS) paths, seconds per sample",
        "",
        "| T | torch probe (one pass) | torch one context per position (extrapolated) | vLLM top-K probe "
        "(request per position, prefix cache) | per-position / torch probe (target >= 20) | vLLM probe / torch probe "
        "| per-position / vLLM probe |",
        "|---|---|---|---|---|---|---|",
    ]
    for T in args.T:
        tr, vr = torch_res[T], vres[T]
        rp = tr["ref"] / tr["probe"]
        lines.append(
            f"| {T} | {tr['probe']:.2f} | {tr['ref']:.1f} ({tr['ref_note']}) | {na(vr, 'probe'):.2f} "
            f"| {rp:.0f}x {'ok' if rp >= 20 else 'MISSED'} | {na(vr, 'probe') / tr['probe']:.2f} "
            f"| {tr['ref'] / na(vr, 'probe'):.1f}x |")
    lines += [
        "",
        "## (2) Selection-signal cost per sample: EAS scoring vs pass-rate@" + str(args.rollouts),
        "",
        f"| T | torch plain | torch probe (EAS) | vLLM top-K plain | vLLM top-K probe | vLLM pass-rate@{args.rollouts} "
        f"({args.rollouts} rollouts, max_tokens = response length) | generated tokens / sample | "
        f"pass-rate / torch probe | pass-rate / torch plain | pass-rate / vLLM probe |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for T in args.T:
        tr, vr = torch_res[T], vres[T]
        pr = na(vr, "rollouts")
        lines.append(
            f"| {T} | {tr['plain']:.2f} | {tr['probe']:.2f} | {na(vr, 'plain'):.2f} | {na(vr, 'probe'):.2f} "
            f"| {pr:.2f} | {na(vr, 'gen_tokens'):.0f} (max_tokens {na(vr, 'max_tokens')}, finish {vr.get('finish')}) "
            f"| {pr / tr['probe']:.2f} | {pr / tr['plain']:.1f} | {pr / na(vr, 'probe'):.2f} |")
    lines += [
        "",
        "torch probe / torch plain: " + ", ".join(
            f"T={T} {torch_res[T]['probe'] / torch_res[T]['plain']:.2f} (target <= {1.3 * (1 + m):.2f})" for T in args.T),
    ]
    if vmeta:
        lines.append(f"\nvLLM worker log: {vmeta['log']}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
