"""Benchmark of the exact torch scoring engine (undercurve.scoring.torch_engine).

Measures, on one model in one run:
  (a) probe mode (one batched pass) vs one context per position (the reference);
  (b) plain mode vs a bare ``model(input_ids)`` forward;
  (c) peak memory vs T for bare forward / plain / probe.
and prints a markdown report. Default model: a random Qwen2 with a realistic shape that
still fits 2 CPU cores (hidden 256, 4 layers, vocab 32k); ``--model PATH`` for a real one.

    python benchmarks/bench_torch_engine.py                 # defaults
    python benchmarks/bench_torch_engine.py --model DIR --T 1000 2000 --mem-T 1000 4000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from undercurve.scoring.torch_engine import TorchScorer, next_token_stats  # noqa: E402
from undercurve.scoring.trajectory import Trajectory  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="local model folder (default: a random Qwen2, see --hidden etc.)")
    ap.add_argument("--T", type=int, nargs="+", default=[1000], help="trajectory lengths for (a) and (b)")
    ap.add_argument("--mem-T", type=int, nargs="+", default=[500, 1000, 2000, 4000], help="lengths for (c)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--suffix-len", type=int, default=3, help='m: "\\boxed{" is 3 Qwen2 tokens')
    ap.add_argument("--ref-positions", type=int, default=12, help="positions timed for the reference")
    ap.add_argument("--repeats", type=int, default=3, help="timings report the minimum of this many runs")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--mem-child", nargs=2, metavar=("WHAT", "T"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def load_model(args):
    if args.model:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sdpa")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, max_position_embeddings=32768, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg)


def make_traj(vocab: int, prompt_len: int, T: int, m: int, seed: int = 0) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (prompt_len + T + m,), generator=g).tolist()
    return Trajectory(id=f"T{T}", prompt_ids=ids[:prompt_len], response_ids=ids[prompt_len : prompt_len + T],
                      T=T, suffix_ids=ids[prompt_len + T :])


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, dev, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.inference_mode()
def bare_forward(model, traj, dev):
    return model(input_ids=torch.tensor([traj.prompt_ids + traj.response_ids], device=dev)).logits


@torch.inference_mode()
def reference_positions(scorer, traj, positions):
    """One context per position, done sensibly: base model on C_t, LM head on the suffix rows only."""
    m, dev = len(traj.suffix_ids), scorer.device
    for t in positions:
        ids = torch.tensor([traj.prompt_ids + traj.response_ids[:t] + traj.suffix_ids], device=dev)
        h = scorer.base(input_ids=ids).last_hidden_state[0, -m:]
        next_token_stats(scorer.lm_head(h))


# ---------------------------------------------------------------- memory (child process)
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_child(args) -> dict:
    """Peak memory of one call, in a fresh process so earlier runs leave no trace."""
    what, T = args.mem_child[0], int(args.mem_child[1])
    model = load_model(args)
    scorer = TorchScorer(model, device=args.device, dtype=args.dtype)
    dev = scorer.device
    traj = make_traj(model.config.vocab_size, args.prompt_len, T, args.suffix_len)
    small = make_traj(model.config.vocab_size, args.prompt_len, 16, args.suffix_len, seed=1)
    run = {
        "bare": lambda tr: bare_forward(scorer.model, tr, dev),
        "plain": lambda tr: scorer.score([tr], "plain"),
        "probe": lambda tr: scorer.score([tr], "probe"),
    }[what]
    run(small)  # warm-up: allocator pools, lazy inits
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run(traj)
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "how": "cuda max_memory_allocated"}
    base, peak, stop = _rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    run(traj)
    stop.set()
    th.join()
    peak[0] = max(peak[0], _rss_bytes())
    return {"peak_bytes": peak[0] - base, "how": "RSS peak - RSS before (1 ms sampling)"}


def measure_memory(args, argv) -> list[dict]:
    rows = []
    for T in args.mem_T:
        row = {"T": T}
        for what in ("bare", "plain", "probe"):
            cmd = [sys.executable, __file__, *argv, "--mem-child", what, str(T)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            row[what], row["how"] = res["peak_bytes"], res["how"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------- main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mem_child:
        print(json.dumps(mem_child(args)))
        return
    model = load_model(args)
    scorer = TorchScorer(model, device=args.device, dtype=args.dtype)
    dev, m, V = scorer.device, args.suffix_len, model.config.vocab_size
    scorer.score([make_traj(V, args.prompt_len, 32, m, seed=1)], "probe")  # warm-up
    cfg = model.config
    lines = [
        "# Torch scoring engine benchmark", "",
        f"- command: `python benchmarks/bench_torch_engine.py {' '.join(argv)}`".rstrip(),
        f"- model: {args.model or 'random Qwen2'} (hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
        f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads, vocab {V})",
        f"- device: {dev} ({scorer.dtype}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, load average before run {os.getloadavg()[0]:.1f}",
        f"- prompt {args.prompt_len} tokens, suffix m = {m} tokens; times are the minimum of {args.repeats} interleaved runs",
        "",
    ]
    timing = []
    for T in args.T:
        traj = make_traj(V, args.prompt_len, T, m)
        runs = {
            "bare": lambda: bare_forward(scorer.model, traj, dev),
            "plain": lambda: scorer.score([traj], "plain"),
            "probe": lambda: scorer.score([traj], "probe"),
        }
        # interleaved repeats, so a noisy neighbour slows all three alike; keep the minimum
        best = {k: math.inf for k in runs}
        for _ in range(args.repeats):
            for k, fn in runs.items():
                best[k] = min(best[k], best_time(fn, dev, 1))
        t_bare, t_plain, t_probe = best["bare"], best["plain"], best["probe"]
        print(f"T={T}: bare {t_bare:.3f}s plain {t_plain:.3f}s probe {t_probe:.3f}s", file=sys.stderr)
        n = min(args.ref_positions, T - 1)
        positions = [1 + round(i * (T - 2) / max(1, n - 1)) for i in range(n)]  # evenly spread over 1..T-1
        t_ref_sub = best_time(lambda: reference_positions(scorer, traj, positions), dev, 1)
        t_ref = t_ref_sub / n * (T - 1)  # extrapolated: mean time per position x (T-1) positions
        timing.append(dict(T=T, bare=t_bare, plain=t_plain, probe=t_probe, ref=t_ref, ref_n=n, ref_sub=t_ref_sub))

    lines += ["## Time", "",
              "| T | bare forward s | plain s | probe s | one context per position s (extrapolated) "
              "| plain / bare (target <= 1.15) | probe / plain (target <= " + f"{1.3 * (1 + m):.2f}) "
              "| reference / probe (target >= 20) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in timing:
        pb, pp, rp = r["plain"] / r["bare"], r["probe"] / r["plain"], r["ref"] / r["probe"]
        lines.append(
            f"| {r['T']} | {r['bare']:.3f} | {r['plain']:.3f} | {r['probe']:.3f} | {r['ref']:.1f} "
            f"({r['ref_n']} positions took {r['ref_sub']:.2f}) | {pb:.2f} {'ok' if pb <= 1.15 else 'MISSED'} "
            f"| {pp:.2f} {'ok' if pp <= 1.3 * (1 + m) else 'MISSED'} | {rp:.0f}x {'ok' if rp >= 20 else 'MISSED'} |"
        )
    lines += ["", "The reference runs the base model on each C_t = prompt + x_1..x_t + suffix and the LM head on",
              "the m suffix rows only; it is timed on evenly spaced positions and extrapolated linearly",
              "(mean time per position x (T-1)).", ""]
    if not args.skip_memory:
        mem = measure_memory(args, [a for a in argv])
        mb = 1024 * 1024
        lines += ["## Peak memory", "",
                  f"Measured: {mem[0]['how']}, each cell in a fresh process after a warm-up call. "
                  "On CPU this counts every allocation of the call (activations, logits, KV cache), "
                  "not the model weights; the allocator may hold freed pages, so it is an upper bound "
                  "on live memory.", "",
                  "| T | bare forward MiB | plain MiB | probe MiB | fp32 [T x V] logits MiB |", "|---|---|---|---|---|"]
        for r in mem:
            full = (r["T"] + args.prompt_len) * V * 4 / mb
            lines.append(f"| {r['T']} | {r['bare'] / mb:.0f} | {r['plain'] / mb:.0f} | {r['probe'] / mb:.0f} | {full:.0f} |")
        lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
