"""``python -m undercurve.vllm_worker job.json``: one model engine, several steps.

Runs in the vLLM environment (started by ``undercurve.vllm_runtime.run_vllm_job``); imports
only what both environments have. With ``engine.backend = "hf"`` the sampling steps run on
transformers instead (``undercurve.hf_sampling``; no vllm import, so either environment can
run it). Job format (JSON)::

    {"model": "/path/to/model",
     "engine": {"backend": "vllm", "batch_sequences": 64, "seed": 0, "dtype": "auto", "enable_prefix_caching": true, "max_logprobs": null,
                "max_model_len": null, "block_size": null, "enforce_eager": true, "extra": {}},
     "steps": [
       {"kind": "rollouts", "input": "samples.parquet", "output": "rollouts.parquet",
        "pass_rate_output": "pass_rate.parquet", "n": 4, "temperature": 1.0, "top_p": 1.0,
        "max_tokens": 1024, "seed": 0},
       {"kind": "generate", "input": ..., "output": ..., "n": 64, ...same sampling keys},
       {"kind": "score", "input": "samples.parquet", "output": "scores.parquet",
        "set_aside_output": "set_aside.parquet", "mode": "probe", "top_k": 20,
        "answer_prefix_tokens": 0, "probe_batch": 256, "batch_size": 32,
        "edis": {"window": 8, "tau_burst": 1.36, "tau_rebound": 1.33, "units": "bits"},
        "box_openers": ["\\boxed{"]}],
     "result_path": "job.result.json"}

Inputs are Parquet with the sample columns (``id, prompt, answer``; ``response`` for score).
Every output is written atomically with a ``<output>.fp`` fingerprint (step settings, model,
input content hash); a step whose outputs exist with the same fingerprint is skipped, and the
engine is only built if some step has work to do. Progress goes to stdout.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from pathlib import Path

import polars as pl

from undercurve.answers import DEFAULT_BOX_OPENERS, extract_answer, is_equivalent
from undercurve.eas import EdisParams
from undercurve.io import file_sha256, fingerprint, outputs_verified, write_marker, write_parquet_atomic, write_text_atomic
from undercurve.schema import SET_ASIDE_SCHEMA, set_aside_frame
from undercurve.scoring.score import SCORE_SCHEMA, build_trajectories

SAMPLING_DEFAULTS = {"n": 4, "temperature": 1.0, "top_p": 1.0, "max_tokens": 1024, "seed": 0, "batch_size": 64,
                     "box_openers": list(DEFAULT_BOX_OPENERS), "last_number_fallback": False}
SCORE_DEFAULTS = {
    "mode": "probe", "top_k": 20, "answer_prefix_tokens": 0, "probe_batch": 256, "batch_size": 32,
    "edis": {}, "box_openers": list(DEFAULT_BOX_OPENERS),  # edis: EdisParams fields (defaults in eas.py)
}
ROLLOUT_SCHEMA = {
    "id": pl.Utf8, "rollout": pl.Int64, "text": pl.Utf8, "extracted": pl.Utf8, "correct": pl.Boolean,
    "finish_reason": pl.Utf8, "response_tokens": pl.Int64,
}
PASS_RATE_SCHEMA = {"id": pl.Utf8, "n": pl.Int64, "n_correct": pl.Int64, "pass_rate": pl.Float64}


def _as_list(x) -> list:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


def log(msg: str) -> None:
    print(f"[vllm-worker {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Worker:
    def __init__(self, job: dict):
        self.job = job
        self.model = str(job["model"])
        self.engine_opts = {"seed": 0, "dtype": "auto", "enable_prefix_caching": True, **job.get("engine", {})}
        # "hf": transformers sampling (undercurve.hf_sampling), for CPUs where vLLM is slow;
        # it runs generate/rollouts steps only (scoring has its own torch engine)
        self.backend = self.engine_opts.get("backend", "vllm")
        self._llm = None
        self._hf_model = None
        self._tokenizer = None

    # ---------------------------------------------------------------- engine
    @property
    def llm(self):
        if self._llm is None:
            from vllm import LLM

            o = self.engine_opts
            max_logprobs = o.get("max_logprobs")
            if max_logprobs is None:  # enough for every score step of this job
                ks = [s.get("top_k", SCORE_DEFAULTS["top_k"]) for s in self.job["steps"] if s["kind"] == "score"]
                max_logprobs = -1 if -1 in ks else max(ks + [20])
            kwargs = dict(
                model=self.model, seed=o["seed"], dtype=o["dtype"], enable_prefix_caching=o["enable_prefix_caching"],
                max_logprobs=max_logprobs, enforce_eager=o.get("enforce_eager", True),
                distributed_executor_backend="uni",  # in-process, no Ray / multiprocessing workers
            )
            for key in ("max_model_len", "block_size", "gpu_memory_utilization", "max_num_seqs"):
                if o.get(key) is not None:
                    kwargs[key] = o[key]
            import torch

            if not torch.cuda.is_available():
                # vLLM rewinds a per-request seeded generator after a chunked prefill step with
                # Generator.set_offset, which CPU generators do not support ("CPU Generator does
                # not use offset"): seeded rollouts of many prompts crash unless prefill is whole.
                kwargs["enable_chunked_prefill"] = False
            kwargs.update(o.get("extra") or {})
            t0 = time.time()
            log(f"building engine for {self.model} (max_logprobs={max_logprobs})")
            self._llm = LLM(**kwargs)
            log(f"engine ready in {time.time() - t0:.1f}s")
        return self._llm

    @property
    def hf_model(self):
        if self._hf_model is None:
            import torch
            from transformers import AutoModelForCausalLM

            dtype = self.engine_opts["dtype"]
            t0 = time.time()
            self._hf_model = AutoModelForCausalLM.from_pretrained(
                self.model, dtype=torch.float32 if dtype == "auto" else getattr(torch, dtype),
                trust_remote_code=bool((self.engine_opts.get("extra") or {}).get("trust_remote_code"))).eval()
            log(f"transformers model {self.model} ready in {time.time() - t0:.1f}s")
        return self._hf_model

    @property
    def tokenizer(self):
        # the HF tokenizer itself (not vLLM's wrapper): identical ids to the torch engine's
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    # ---------------------------------------------------------------- steps
    def run(self) -> dict:
        results = []
        for i, step in enumerate(self.job["steps"]):
            kind = step["kind"]
            name = step.get("name", f"{i}-{kind}")
            if kind == "score" and self.backend != "vllm":
                raise ValueError(f"step {name}: score steps need the vllm backend (the torch engine scores in-process)")
            settings = self._settings(step)
            outputs = self._outputs(step)
            fp = fingerprint({"kind": kind, "settings": settings, "model": self.model,
                              "engine": {k: self.engine_opts.get(k) for k in ("seed", "dtype")}
                              | ({"backend": self.backend} if self.backend != "vllm" else {}),
                              "input": file_sha256(step["input"])})
            marker = Path(outputs["output"] + ".fp")
            t0 = time.time()
            if outputs_verified(marker, fp, list(outputs.values())):
                log(f"step {name}: outputs up to date and verified, skipped")
                info = {"skipped": True}
            else:
                if marker.exists():
                    log(f"step {name}: outputs missing or failed verification (truncated or edited?): recomputing")
                log(f"step {name}: start")
                info = getattr(self, f"_step_{kind}")(step, settings, outputs, name)
                write_marker(marker, fp, list(outputs.values()))  # last: vouches for complete outputs
                info["skipped"] = False
                log(f"step {name}: done in {time.time() - t0:.1f}s")
            results.append({"name": name, "kind": kind, "outputs": outputs, "fingerprint": fp,
                            "seconds": round(time.time() - t0, 3), **info})
        vocab = self._llm.llm_engine.model_config.get_vocab_size() if self._llm is not None else None
        return {"model": self.model, "vocab_size": vocab, "steps": results}

    @staticmethod
    def _settings(step: dict) -> dict:
        kind = step["kind"]
        if kind not in ("rollouts", "generate", "score"):
            raise ValueError(f"unknown step kind {kind!r}")
        defaults = SCORE_DEFAULTS if kind == "score" else SAMPLING_DEFAULTS
        unknown = set(step) - set(defaults) - {"kind", "name", "input", "output", "pass_rate_output", "set_aside_output"}
        if unknown:
            raise ValueError(f"step {kind}: unknown keys {sorted(unknown)}")
        s = {k: step.get(k, v) for k, v in defaults.items()}
        for perf_only in ("batch_size", "probe_batch"):  # chunking does not change results
            s.pop(perf_only, None)
        if not s.get("last_number_fallback", True):  # off: the fingerprint of steps from before the option
            s.pop("last_number_fallback")
        return s

    @staticmethod
    def _outputs(step: dict) -> dict:
        out = {"output": str(step["output"])}
        if step["kind"] == "rollouts":
            out["pass_rate_output"] = str(step.get("pass_rate_output") or Path(step["output"]).with_name("pass_rate.parquet"))
        if step["kind"] == "score":
            out["set_aside_output"] = str(step.get("set_aside_output") or Path(step["output"]).with_name("set_aside.parquet"))
        return out

    def _step_rollouts(self, step, s, outputs, name) -> dict:
        info = self._step_generate(step, s, outputs, name)
        rollouts = pl.read_parquet(outputs["output"])
        rates = (
            rollouts.group_by("id", maintain_order=True)
            .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("correct").fill_null(False).sum().cast(pl.Int64).alias("n_correct"))
            .with_columns((pl.col("n_correct") / pl.col("n")).alias("pass_rate"))
        )
        write_parquet_atomic(rates.select(list(PASS_RATE_SCHEMA)), outputs["pass_rate_output"])
        return info

    def _step_generate(self, step, s, outputs, name) -> dict:
        """n samples per prompt (chat template applied), answers extracted and checked."""
        from undercurve.scoring.trajectory import prompt_token_ids

        df = pl.read_parquet(step["input"])
        has_answer = "answer" in df.columns
        records = df.to_dicts()
        prompts = [prompt_token_ids(self.tokenizer, r["prompt"]) for r in records]
        # per-sample seed from the id: results do not depend on order or batching
        seeds = [(s["seed"] + zlib.crc32(str(r["id"]).encode())) % (2**31) for r in records]
        bs = step.get("batch_size", SAMPLING_DEFAULTS["batch_size"])
        sample = self._sample_hf if self.backend == "hf" else self._sample_vllm
        rows = []
        for r, outs in zip(records, sample(prompts, seeds, s, bs, name)):
            for k, (text, finish, n_generated) in enumerate(outs):
                ext = extract_answer(text, tuple(s["box_openers"]), s.get("last_number_fallback", False))
                rows.append({
                    "id": str(r["id"]), "rollout": k, "text": text, "extracted": ext,
                    "correct": is_equivalent(ext, r["answer"]) if has_answer else None,
                    "finish_reason": finish, "response_tokens": n_generated,
                })
        write_parquet_atomic(pl.DataFrame(rows, schema=ROLLOUT_SCHEMA), outputs["output"])
        return {"rows": len(rows)}

    def _sample_vllm(self, prompts, seeds, s, bs, name):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        for start in range(0, len(prompts), bs):
            params = [SamplingParams(n=s["n"], temperature=s["temperature"], top_p=s["top_p"],
                                     max_tokens=s["max_tokens"], seed=seed) for seed in seeds[start : start + bs]]
            batch = [TokensPrompt(prompt_token_ids=p) for p in prompts[start : start + bs]]
            for out in self.llm.generate(batch, params, use_tqdm=False):
                yield [(c.text, c.finish_reason, len(c.token_ids)) for c in out.outputs]
            log(f"step {name}: {min(start + bs, len(prompts))}/{len(prompts)} prompts x {s['n']}")

    def _sample_hf(self, prompts, seeds, s, _bs, name):
        from undercurve.hf_sampling import sample

        tok = self.tokenizer
        stop = {t for t in (tok.eos_token_id, *_as_list(getattr(self.hf_model.generation_config, "eos_token_id", None)))
                if t is not None}
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(stop)
        done = lambda i, total: log(f"step {name}: {i}/{total} sequences ({len(prompts)} prompts x {s['n']})")  # noqa: E731
        # sequences per forward pass: ~64 is where a 135M model's CPU throughput levels off
        per_prompt = sample(self.hf_model, prompts, seeds, s["n"], s["temperature"], s["top_p"], s["max_tokens"],
                            stop, pad, batch_size=self.engine_opts.get("batch_sequences", 64), on_batch=done)
        for outs in per_prompt:
            yield [(tok.decode(o.token_ids, skip_special_tokens=True), o.finish_reason, len(o.token_ids)) for o in outs]

    def _step_score(self, step, s, outputs, name) -> dict:
        from undercurve.scoring.vllm_engine import VllmScorer

        df = pl.read_parquet(step["input"])
        trajs, aside = build_trajectories(df, self.tokenizer, s["answer_prefix_tokens"], s["box_openers"])
        # vLLM rejects a whole generate() call if one request is over max_model_len: set those aside
        limit = self.llm.llm_engine.model_config.max_model_len
        source = dict(zip(df["id"].cast(pl.Utf8), df["source"])) if "source" in df.columns else {}
        fits = []
        for t in trajs:
            need = t.P + t.length + len(t.suffix_ids) + 1
            if need <= limit:
                fits.append(t)
            else:
                aside.append({"id": t.id, "source": source.get(t.id), "reason": "longer_than_max_model_len",
                              "detail": f"{need} tokens > max_model_len {limit}"})
        trajs = fits
        scorer = VllmScorer(
            self.llm, top_k=s["top_k"], probe_batch=step.get("probe_batch", SCORE_DEFAULTS["probe_batch"]),
            edis=EdisParams(**s["edis"]),
        )
        rows = []
        bs = step.get("batch_size", SCORE_DEFAULTS["batch_size"])
        last = [time.time()]

        def probe_progress(done: int, total: int) -> None:  # long samples: a line every 30 s
            if time.time() - last[0] > 30:
                last[0] = time.time()
                log(f"step {name}: samples {len(rows)}+: {done}/{total} probe positions of this batch")

        for start in range(0, len(trajs), bs):
            rows += scorer.score(trajs[start : start + bs], mode=s["mode"], progress=probe_progress)
            log(f"step {name}: {len(rows)}/{len(trajs)} samples scored ({s['mode']}, top_k={s['top_k']})")
        # summaries + float32 per-token lists; the curve ``entropy`` is derivable from them
        # (scoring.score.entropy_curve), so it is not stored twice
        write_parquet_atomic(pl.DataFrame(rows, schema=SCORE_SCHEMA).drop("entropy"), outputs["output"])
        frame = set_aside_frame(aside, "score") if aside else pl.DataFrame(schema=SET_ASIDE_SCHEMA)
        write_parquet_atomic(frame, outputs["set_aside_output"])
        return {"rows": len(rows), "set_aside": len(aside)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m undercurve.vllm_worker JOB.json", file=sys.stderr)
        return 2
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    result = Worker(job).run()
    result_path = Path(job.get("result_path") or job_path.with_suffix(".result.json"))
    write_text_atomic(json.dumps(result, indent=2), result_path)
    log(f"result written to {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
