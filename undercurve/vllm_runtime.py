"""Run vLLM work from the main environment: a subprocess in the separate vLLM venv.

vLLM pins fastapi<0.137 and Prefect needs >=0.139 (docs/ARCHITECTURE.md), so nothing here
imports vllm. A *job* is one JSON file holding the model, engine options and a list of
steps; ``python -m undercurve.vllm_worker job.json`` builds one engine and runs every
step, so several stages pay the engine start-up once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from undercurve.jobs import JobFailed, run_job

REPO_ROOT = Path(__file__).resolve().parent.parent

# In-process engine on CPU (no engine-core subprocess, no thread pinning on a shared box);
# these are harmless on GPU machines, and CUDA_VISIBLE_DEVICES is left as the caller set it.
VLLM_ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


class VllmEnvironmentMissing(RuntimeError):
    """The separate vLLM interpreter is not installed."""


def vllm_python() -> Path:
    """The interpreter of the vLLM environment: $UNDERCURVE_VLLM_PYTHON, else .venv-vllm."""
    override = os.environ.get("UNDERCURVE_VLLM_PYTHON")
    path = Path(override) if override else REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if not path.exists():
        where = "$UNDERCURVE_VLLM_PYTHON" if override else "the default location"
        raise VllmEnvironmentMissing(
            f"vLLM interpreter not found at {path} ({where}). Run `make setup` to create "
            f".venv-vllm, or set UNDERCURVE_VLLM_PYTHON to a Python with vllm installed."
        )
    return path


def worker_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for k, v in VLLM_ENV_DEFAULTS.items():
        env.setdefault(k, v)
    # the worker imports undercurve from this checkout, not from an installed copy
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_vllm_job(
    job: dict,
    workdir: str | Path,
    *,
    name: str = "job",
    timeout: float | None = None,
    echo: bool = False,
    env: dict | None = None,
    on_line=None,
    python: str | Path | None = None,
) -> dict:
    """Run ``job`` in the vLLM environment and return the worker's result dict.

    Writes ``<workdir>/<name>.json``; the worker's stdout+stderr go to ``<workdir>/<name>.log``
    (also echoed to our stdout when ``echo``) and its result to ``<workdir>/<name>.result.json``.
    Raises JobFailed (a RuntimeError) with the log tail and path when the worker fails.
    ``python``: another interpreter (the ``hf`` backend runs in the main environment).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / f"{name}.json"
    log_path = workdir / f"{name}.log"
    result_path = workdir / f"{name}.result.json"
    job = {**job, "result_path": str(result_path)}
    job_path.write_text(json.dumps(job, indent=2, default=str))
    result_path.unlink(missing_ok=True)

    cmd = [str(python or vllm_python()), "-m", "undercurve.vllm_worker", str(job_path)]
    def each_line(line: str) -> None:
        if echo:
            sys.stdout.write(line)
        if on_line:
            on_line(line)

    run_job(cmd, log_path, what="vLLM worker", env=worker_env(env), cwd=REPO_ROOT, timeout_s=timeout,
            on_line=each_line)
    if not result_path.exists():
        raise JobFailed(f"vLLM worker wrote no result {result_path}; full log: {log_path}", log_path)
    return json.loads(result_path.read_text())
