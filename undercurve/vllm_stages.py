"""Stage-level worker jobs: ONE job with one step per input shard (vLLM, or transformers).

One job builds the engine once; the worker skips steps whose outputs exist with the same
fingerprint, so a killed run, rerun, redoes only the unfinished shards.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from undercurve.vllm_runtime import run_vllm_job

log = logging.getLogger("undercurve")


def sampling_backend(engine: str) -> str:
    """``auto``: vLLM where there is a GPU; on a CPU transformers, which is the faster one
    there (BENCHMARKS.md, "Rollouts on CPU")."""
    if engine != "auto":
        return engine
    import torch

    return "vllm" if torch.cuda.is_available() else "hf"


def _engine_opts(settings: dict) -> dict:
    opts = {"seed": settings.get("seed", 0)}
    if settings.get("backend", "vllm") != "vllm":
        opts["backend"] = settings["backend"]
    if settings.get("dtype") not in (None, "auto"):
        opts["dtype"] = settings["dtype"]
    if settings.get("trust_remote_code"):
        opts["extra"] = {"trust_remote_code": True}
    return opts


def pass_rate_rollouts(inputs: list[Path], model: str, settings: dict, out_dir: str | Path,
                       trust_remote_code: bool = False, progress=None) -> tuple[list[dict], float]:
    """n rollouts per sample of the given input shards (id, prompt, answer); -> (the steps,
    each with its ``input`` shard, its ``output`` rollouts and its ``pass_rate_output``
    (``id, n, n_correct, pass_rate``) files; seconds the steps computed in this run).

    One worker job on the ``settings["engine"]`` backend (vLLM, or transformers on a CPU)."""
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    steps = [{"kind": "rollouts", "name": f"rollouts-{i:05d}", "input": str(p),
              "output": str(out / "shards" / f"rollouts-{i:05d}.parquet"),
              "pass_rate_output": str(out / "shards" / f"pass_rate-{i:05d}.parquet"),
              "n": settings["rollouts"], "temperature": settings["temperature"], "top_p": settings["top_p"],
              "max_tokens": settings["max_tokens"], "seed": settings["seed"],
              "box_openers": settings["box_openers"], "last_number_fallback": settings["last_number_fallback"]}
             for i, p in enumerate(inputs)]
    backend = sampling_backend(settings["engine"])
    log.info("pass_rate: %d shards x %d rollouts per sample (%s)", len(steps), settings["rollouts"], backend)
    if not steps:
        return [], 0.0
    job = {"model": model, "steps": steps,
           "engine": _engine_opts({**settings, "backend": backend, "trust_remote_code": trust_remote_code})}
    result = run_vllm_job(job, out, name="rollouts", on_line=_step_progress(progress, len(steps)),
                          python=sys.executable if backend == "hf" else None)
    skipped = sum(s["skipped"] for s in result["steps"])
    log.info("pass_rate: %d shards done, %d of them already finished before this run", len(steps), skipped)
    return steps, computed_seconds(result)


def computed_seconds(result: dict) -> float:
    """Seconds a worker job spent on the steps it computed (reused steps cost nothing now)."""
    return float(sum(s["seconds"] for s in result["steps"] if not s.get("skipped")))


def _step_progress(progress, n_steps: int):
    from undercurve.progress import VLLM_STEP_DONE, from_lines

    return from_lines(VLLM_STEP_DONE, progress, n_steps) if progress else None


def score_with_vllm(inputs: list[Path], settings: dict, out_dir: str | Path, progress=None) -> tuple[list[dict], float]:
    """The paper's top-K path over the given input shards (id, source, prompt, response,
    answer); -> (the steps, each with its ``input``, its ``output`` scores (summaries and
    per-token lists) and its ``set_aside_output``; seconds computed in this run)."""
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    keys = ("mode", "top_k", "answer_prefix_tokens", "edis", "box_openers")
    steps = [{"kind": "score", "name": f"score-{i:05d}", "input": str(p),
              "output": str(out / "shards" / f"scores-{i:05d}.parquet"),
              "set_aside_output": str(out / "shards" / f"set_aside-{i:05d}.parquet"),
              **{k: settings[k] for k in keys}} for i, p in enumerate(inputs)]
    if not steps:
        return [], 0.0
    job = {"model": settings["model"], "engine": _engine_opts(settings), "steps": steps}
    log.info("score: %d shards (vLLM top-%d, %s)", len(steps), settings["top_k"], settings["mode"])
    result = run_vllm_job(job, out, name="score", on_line=_step_progress(progress, len(steps)))
    return steps, computed_seconds(result)
