"""N samples per question: vLLM (a ``generate`` step in the vLLM environment) or, where that
environment is missing, transformers' ``generate`` in-process (same output columns)."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import polars as pl

from undercurve.io import write_parquet_atomic

log = logging.getLogger("undercurve")
RAW_SCHEMA = {"id": pl.Utf8, "rollout": pl.Int64, "text": pl.Utf8, "finish_reason": pl.Utf8, "n_tokens": pl.Int64}


def generate_vllm(questions: pl.DataFrame, model: str, g: dict, out_dir: Path, trust_remote_code: bool = False) -> pl.DataFrame:
    from undercurve.vllm_runtime import run_vllm_job

    inp = write_parquet_atomic(questions.select("id", "prompt", "answer"), out_dir / "input.parquet")
    step = {"kind": "generate", "name": "validate-generate", "input": str(inp), "output": str(out_dir / "raw.parquet"),
            "n": g["n"], "temperature": g["temperature"], "top_p": g["top_p"], "max_tokens": g["max_tokens"],
            "seed": g["seed"], "batch_size": g["batch_size"]}
    engine = {"seed": g["seed"], **({"extra": {"trust_remote_code": True}} if trust_remote_code else {})}
    log.info("generate: %d questions x %d samples (vLLM)", questions.height, g["n"])
    run_vllm_job({"model": model, "engine": engine, "steps": [step]}, out_dir, name="generate")
    return pl.read_parquet(step["output"]).select(list(RAW_SCHEMA))


def generate_hf(questions: pl.DataFrame, model: str, g: dict) -> pl.DataFrame:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from undercurve.scoring.trajectory import prompt_token_ids

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    eos = tok.convert_tokens_to_ids(tok.eos_token) if tok.eos_token else None
    rows = []
    log.info("generate: %d questions x %d samples (transformers, in-process)", questions.height, g["n"])
    for i, r in enumerate(questions.iter_rows(named=True)):
        if i:
            log.info("generate: %d/%d questions done", i, questions.height)
        ids = torch.tensor([prompt_token_ids(tok, r["prompt"])])
        torch.manual_seed((g["seed"] + zlib.crc32(str(r["id"]).encode())) % (2**31))
        with torch.inference_mode():
            out = lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=g["temperature"],
                              top_p=g["top_p"], top_k=0, max_new_tokens=g["max_tokens"], num_return_sequences=g["n"],
                              eos_token_id=eos, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos)
        for k, seq in enumerate(out[:, ids.shape[1]:].tolist()):
            stop = eos is not None and eos in seq
            seq = seq[: seq.index(eos)] if stop else seq
            rows.append({"id": str(r["id"]), "rollout": k, "text": tok.decode(seq, skip_special_tokens=True),
                         "finish_reason": "stop" if stop else "length", "n_tokens": len(seq)})
    return pl.DataFrame(rows, schema=RAW_SCHEMA)
