"""N samples per question: a ``generate`` step of the model worker, on vLLM or (on a CPU)
transformers, the same job either way."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import polars as pl

from undercurve.io import write_parquet_atomic

log = logging.getLogger("undercurve")
RAW_SCHEMA = {"id": pl.Utf8, "rollout": pl.Int64, "text": pl.Utf8, "finish_reason": pl.Utf8, "response_tokens": pl.Int64}


def generate(questions: pl.DataFrame, model: str, g: dict, out_dir: Path, trust_remote_code: bool = False) -> pl.DataFrame:
    """One worker job on the configured backend (vLLM, or transformers on a CPU)."""
    from undercurve.vllm_runtime import run_vllm_job
    from undercurve.vllm_stages import sampling_backend

    backend = sampling_backend(g["engine"])
    inp = write_parquet_atomic(questions.select("id", "prompt", "answer"), out_dir / "input.parquet")
    step = {"kind": "generate", "name": "validate-generate", "input": str(inp), "output": str(out_dir / "raw.parquet"),
            "n": g["n"], "temperature": g["temperature"], "top_p": g["top_p"], "max_tokens": g["max_tokens"],
            "seed": g["seed"], "batch_size": g["batch_size"]}
    engine = {"seed": g["seed"], "backend": backend, **({"extra": {"trust_remote_code": True}} if trust_remote_code else {})}
    log.info("generate: %d questions x %d samples (%s)", questions.height, g["n"], backend)
    run_vllm_job({"model": model, "engine": engine, "steps": [step]}, out_dir, name="generate",
                 python=sys.executable if backend == "hf" else None)
    return pl.read_parquet(step["output"]).select(list(RAW_SCHEMA))
