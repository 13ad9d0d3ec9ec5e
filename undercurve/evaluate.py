"""evalscope evaluation of one checkpoint (AIME24/25 Average Pass@1 over N repeats).

``run_eval`` writes a JSON job and runs ``python -m undercurve.evaluate job.json`` as a child
process (evalscope loads the model, sets global seeds and logging; none of that should live
in the orchestrator), then reads what evalscope wrote under ``work_dir``:

- ``reports/<model>/<benchmark>.json``: the mean accuracy over every (problem, repeat) pair,
  i.e. Average Pass@1;
- ``reviews/<model>/<benchmark>_<subset>.jsonl``: one scored generation per line with
  ``sample_score.generation_index`` = the repeat, giving per-repeat Pass@1 for the spread.

Two modes: ``llm_ckpt`` (transformers inside evalscope; LoRA checkpoints are merged first)
and ``openai_api`` (any OpenAI-compatible server, e.g. vLLM, at ``settings["api_url"]``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from undercurve.config import EvalToolSettings
from undercurve.jobs import JobFailed, log_tail, run_job
from undercurve.train import is_lora_checkpoint, merge_lora, merge_settings

_REPO_ROOT = Path(__file__).resolve().parent.parent

# Every evaluation setting and its default: undercurve.config.EvalToolSettings (one place).
EVAL_DEFAULTS: dict[str, Any] = EvalToolSettings().model_dump()


@dataclass
class BenchmarkScore:
    pass1_mean: float  # Average Pass@1 in [0, 1]
    per_repeat: list[float]  # Pass@1 of each repeat, index = repeat
    n_problems: int
    report_path: Path
    # 0/1 score of each (problem, repeat), problems in evalscope's group order: the input of
    # the bootstrap intervals (undercurve.stats)
    table: list[list[float]] = field(default_factory=list)

    @property
    def pass1_std(self) -> float:
        """Sample standard deviation over repeats (0 for a single repeat)."""
        return statistics.stdev(self.per_repeat) if len(self.per_repeat) > 1 else 0.0


@dataclass
class EvalResult:
    model: str
    work_dir: Path
    log_path: Path
    repeats: int
    benchmarks: dict[str, BenchmarkScore] = field(default_factory=dict)

    @property
    def pass1(self) -> dict[str, float]:
        return {b: s.pass1_mean for b, s in self.benchmarks.items()}

    def to_rows(self, **keys: Any) -> list[dict[str, Any]]:
        """Rows for report.comparison_table, e.g. to_rows(model=..., strategy=..., checkpoint_rank=1)."""
        return [
            {**keys, "benchmark": b, "pass1_mean": s.pass1_mean, "pass1_std": s.pass1_std,
             "n_repeats": len(s.per_repeat), "n_problems": s.n_problems, "report_path": str(s.report_path),
             "table": s.table}
            for b, s in self.benchmarks.items()
        ]


def write_local_benchmark(records: Iterable[Mapping[str, Any]] | Any, out_dir: str | Path) -> Path:
    """Write records (``problem``, ``answer``) as ``out_dir/test.jsonl``.

    evalscope's aime24/aime25 adapters read ``problem`` and ``answer`` and evaluate the ``test``
    split of subset ``default``; a local directory is loaded with datasets' file-name split
    inference, so ``test.jsonl`` is the test split. Pass the directory as ``local_path``.
    """
    if hasattr(records, "iter_rows"):  # polars DataFrame
        records = records.iter_rows(named=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, r in enumerate(records):
        if not r.get("problem") or r.get("answer") in (None, ""):
            raise ValueError(f"benchmark record {i} needs non-empty 'problem' and 'answer': {dict(r)!r:.200}")
        lines.append(json.dumps({"problem": str(r["problem"]), "answer": str(r["answer"]).strip()}, ensure_ascii=False))
    if not lines:
        raise ValueError("no benchmark records")
    tmp = out / ".test.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out / "test.jsonl")
    return out


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def task_config_kwargs(model: str, benchmarks: Mapping[str, str | Path | None], repeats: int,
                       settings: Mapping[str, Any], work_dir: Path) -> dict[str, Any]:
    """JSON-serialisable evalscope TaskConfig arguments."""
    s = settings
    gen = dict(s["generation_config"] or {})
    dataset_args = {name: {"local_path": str(Path(p).resolve())} for name, p in benchmarks.items() if p is not None}
    kw: dict[str, Any] = {
        "model": model,
        "eval_type": s["eval_type"],
        "datasets": list(benchmarks),
        "dataset_args": dataset_args,
        # a local_path always wins over the hub; the hub setting only matters for the None entries
        "dataset_hub": "local" if len(dataset_args) == len(benchmarks) else s["dataset_hub"],
        "repeats": int(repeats),
        "work_dir": str(work_dir),
        "no_timestamp": True,
        "seed": s["seed"],
    }
    if s["eval_type"] == "llm_ckpt":
        # transformers' generate() is greedy unless told otherwise: repeats would all be equal
        if gen.get("temperature", 0) and "do_sample" not in gen:
            gen["do_sample"] = True
        model_args = dict(s["model_args"])
        # evalscope loads checkpoints in float16 by default; on a CPU that is many times slower
        # than float32 (no fp16 matmul units), so a CPU run gets float32 unless told otherwise
        if "precision" not in model_args and not _has_cuda():
            model_args["precision"] = "torch.float32"
        if model_args:
            kw["model_args"] = model_args
    elif s["eval_type"] == "openai_api":
        if not s["api_url"]:
            raise ValueError("eval_type openai_api needs settings['api_url'] (e.g. http://127.0.0.1:8000/v1)")
        kw["api_url"] = s["api_url"]
        kw["api_key"] = s["api_key"]
    else:
        raise ValueError(f"eval_type must be llm_ckpt or openai_api, got {s['eval_type']!r}")
    kw["generation_config"] = gen
    if s["eval_batch_size"]:
        kw["eval_batch_size"] = int(s["eval_batch_size"])
    if s["limit"]:
        kw["limit"] = s["limit"]
    return kw


def run_eval(checkpoint_dir: str | Path | None, benchmarks: Mapping[str, str | Path | None], repeats: int,
             settings: Any = None, *, work_dir: str | Path | None = None, python: str | None = None,
             on_line=None) -> EvalResult:
    """Evaluate one checkpoint on benchmarks (name -> local dir from write_local_benchmark, or None = hub).

    work_dir defaults to ``<checkpoint_dir>-eval``. Raises JobFailed with the log tail and
    ``work_dir/eval.log`` when evalscope fails.
    """
    s = merge_settings(EvalToolSettings, settings, "evaluation")
    if not benchmarks:
        raise ValueError("no benchmarks given")
    for name, p in benchmarks.items():
        if p is not None and not (Path(p) / "test.jsonl").exists() and not Path(p).is_file():
            raise FileNotFoundError(f"benchmark {name}: no test.jsonl in {p} (write it with write_local_benchmark)")
    if work_dir is None:
        if checkpoint_dir is None:
            raise ValueError("work_dir is required when no checkpoint_dir is given")
        work_dir = Path(checkpoint_dir).resolve().with_name(Path(checkpoint_dir).name + "-eval")
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {k: str(v) for k, v in (s.get("env") or {}).items()}

    if s["eval_type"] == "llm_ckpt":
        if checkpoint_dir is None:
            raise ValueError("eval_type llm_ckpt needs a checkpoint_dir")
        model_path = Path(checkpoint_dir).resolve()
        if is_lora_checkpoint(model_path):  # evalscope loads full weights only
            model_path = merge_lora(model_path, python=python, env=env)
        model = str(model_path)
    else:
        model = s["served_model_name"] or str(checkpoint_dir)

    job = task_config_kwargs(model, benchmarks, repeats, s, work_dir)
    job_path = work_dir / "job.json"
    job_path.write_text(json.dumps(job, indent=2))
    log_path = work_dir / "eval.log"
    # the child runs from work_dir: make this package importable even without an install
    child_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    run_job([python or sys.executable, "-m", "undercurve.evaluate", str(job_path)], log_path,
               what="evalscope evaluation", env=child_env, timeout_s=s["timeout_s"], cwd=work_dir, on_line=on_line)

    result = EvalResult(model=model, work_dir=work_dir, log_path=log_path, repeats=int(repeats))
    for name in benchmarks:
        try:
            result.benchmarks[name] = read_benchmark_score(work_dir, name)
        except (FileNotFoundError, ValueError) as exc:
            raise JobFailed(f"evalscope finished but its output for {name} is unusable: {exc}; full log: {log_path}\n"
                            f"--- log tail ---\n{log_tail(log_path)}", log_path) from exc
        got = len(result.benchmarks[name].per_repeat)
        if got != repeats:
            raise JobFailed(f"{name}: expected {repeats} repeats in the reviews, found {got}; full log: {log_path}",
                            log_path)
    return result


def _one(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        raise FileNotFoundError(f"expected one {what}, found {[str(p) for p in paths] or 'none'}")
    return paths[0]


def read_benchmark_score(work_dir: str | Path, benchmark: str) -> BenchmarkScore:
    """Average Pass@1 from the report, per-repeat Pass@1 from the reviews."""
    work_dir = Path(work_dir)
    report_path = _one(sorted(work_dir.glob(f"reports/*/{benchmark}.json")), f"report for {benchmark}")
    report = json.loads(report_path.read_text())
    metrics = report.get("metrics") or []
    if not metrics:
        raise ValueError(f"{report_path} has no metrics")
    primary = (report.get("primary_metric_identity") or {}).get("name")
    metric = next((m for m in metrics if m["identity"]["name"] == primary), metrics[0])
    mean = float(metric["score"])

    by_repeat: dict[int, list[float]] = {}
    cells: dict[tuple[str, Any], dict[int, float]] = {}
    for review in sorted(work_dir.glob(f"reviews/*/{benchmark}_*.jsonl")):
        for line in review.read_text(encoding="utf-8").splitlines():
            ss = json.loads(line)["sample_score"]
            value = ss["score"]["value"]
            acc = float(value.get("acc", next(iter(value.values()), 0.0)) if value else 0.0)
            repeat = int(ss.get("generation_index") or 0)
            by_repeat.setdefault(repeat, []).append(acc)
            cells.setdefault((review.name, ss.get("group_id")), {})[repeat] = acc
    if not by_repeat:
        raise FileNotFoundError(f"no reviews for {benchmark} under {work_dir}/reviews")
    per_repeat = [sum(v) / len(v) for _, v in sorted(by_repeat.items())]
    repeats = sorted(by_repeat)
    table = [[row.get(k, 0.0) for k in repeats] for _, row in sorted(cells.items(), key=lambda kv: str(kv[0]))]
    return BenchmarkScore(mean, per_repeat, len(cells), report_path, table)


def _main(job_path: str) -> None:
    """Child-process entry: run one evalscope task from a JSON job."""
    from evalscope import TaskConfig, run_task

    run_task(TaskConfig(**json.loads(Path(job_path).read_text())))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m undercurve.evaluate JOB.json")
    _main(sys.argv[1])
