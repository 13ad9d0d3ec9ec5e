"""ms-swift 4.x SFT of one selection, run as a subprocess.

The orchestrator never imports ms-swift: each SFT (and LoRA merge) is a child process whose
whole output goes to a log file, so a crash, a CUDA OOM or a hung import cannot take the
caller down, and the failure message can point at the log.

Every checkpoint is kept (no ``save_total_limit``); ms-swift evaluates the held-out split at
each save (``eval_strategy`` follows ``save_strategy``), so every checkpoint gets a
validation loss and the top-k by validation score can be picked afterwards.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from undercurve.config import SftSettings
from undercurve.jobs import JobFailed, log_tail, run_job

# Every SFT setting and its default: undercurve.config.SftSettings (one place).
SFT_DEFAULTS: dict[str, Any] = SftSettings().model_dump()

# Local model dirs: ms-swift cannot infer these from a path, and the model family decides.
_FAMILY = {"qwen2": ("qwen2", "qwen"), "llama": ("llama", "llama3")}

_PASSTHROUGH = [
    "max_length", "num_train_epochs", "max_steps", "learning_rate", "seed",
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "save_strategy", "save_steps", "eval_steps", "split_dataset_ratio", "save_only_model",
    "logging_steps", "warmup_ratio", "lr_scheduler_type", "torch_dtype", "gradient_checkpointing",
    "attn_impl", "deepspeed", "dataset_num_proc", "dataloader_num_workers",
]


@dataclass
class SftResult:
    out_dir: Path
    checkpoints: list[Path]  # sorted by step
    log_path: Path
    metrics: dict[str, Any]  # train summary from logging.jsonl (train_loss, global_step, ...)
    val_loss: dict[str, float | None] = field(default_factory=dict)  # checkpoint path -> eval_loss

    def top_k(self, k: int = 3) -> list[Path]:
        """The k checkpoints with the lowest validation loss (ties: earlier step first)."""
        scored = [c for c in self.checkpoints if self.val_loss.get(str(c)) is not None]
        if not scored:
            raise ValueError(f"no checkpoint in {self.out_dir} has a validation loss (split_dataset_ratio 0?)")
        return sorted(scored, key=lambda c: (self.val_loss[str(c)], _step(c)))[:k]

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "checkpoints": [str(c) for c in self.checkpoints],
            "log_path": str(self.log_path),
            "metrics": self.metrics,
            "val_loss": self.val_loss,
        }


def as_dict(settings: Any) -> dict[str, Any]:
    """Accept a plain mapping or a pydantic settings object."""
    if settings is None:
        return {}
    if hasattr(settings, "model_dump"):
        return settings.model_dump()
    return dict(settings)


def merge_settings(model: type, settings: Any, what: str) -> dict[str, Any]:
    """``settings`` (a mapping or a settings object) validated against ``model``'s fields and
    defaults; an unknown key or a bad value raises ValueError naming it."""
    from pydantic import ValidationError

    try:
        return model.model_validate(as_dict(settings)).model_dump()
    except ValidationError as e:
        raise ValueError(f"bad {what} settings: {e}") from None


def _flag(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _family(model_dir: Path, s: dict[str, Any]) -> tuple[str | None, str | None]:
    model_type, template = s.get("model_type"), s.get("template")
    if model_type and template:
        return model_type, template
    try:
        hf_type = json.loads((model_dir / "config.json").read_text())["model_type"]
    except (OSError, KeyError, ValueError):
        hf_type = None
    default_type, default_template = _FAMILY.get(hf_type, (None, None))
    return model_type or default_type, template or default_template


def sft_command(dataset_jsonl: str | Path, model_dir: str | Path, out_dir: str | Path, settings: Any = None) -> list[str]:
    """ms-swift 4.x ``sft`` argv (without the interpreter / launcher)."""
    s = merge_settings(SftSettings, settings, "SFT")
    model_dir = Path(model_dir)
    model_type, template = _family(model_dir, s)
    args = [
        "--model", str(model_dir),
        "--dataset", str(dataset_jsonl),
        "--output_dir", str(out_dir),
        "--tuner_type", s["tuner_type"],
        "--check_model", "false",  # else ms-swift asks the hub about the model
        "--add_version", "false",  # deterministic output_dir: checkpoints land directly in it
        "--report_to", "none",
    ]
    if model_type:
        args += ["--model_type", model_type]
    if template:
        args += ["--template", template]
    if s["save_strategy"] == "steps" and not s["eval_steps"]:
        s["eval_steps"] = s["save_steps"]  # one validation loss per checkpoint
    for key in _PASSTHROUGH:
        if s.get(key) is not None:
            args += [f"--{key}", _flag(s[key])]
    if s["tuner_type"] == "lora":
        args += ["--lora_rank", str(s["lora_rank"]), "--lora_alpha", str(s["lora_alpha"])]
        targets = s["target_modules"]
        args += ["--target_modules", *([targets] if isinstance(targets, str) else list(targets))]
    args += [str(a) for a in s.get("extra_args") or []]
    return args


def _step(path: Path) -> int:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else -1


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and not p.is_symlink() and _step(p) >= 0]
    return sorted(found, key=_step)


def _read_metrics(out_dir: Path, checkpoints: list[Path]) -> tuple[dict[str, Any], dict[str, float | None]]:
    """Train summary and per-checkpoint eval_loss (the last checkpoint's trainer_state has all history)."""
    history: list[dict[str, Any]] = []
    if checkpoints and (checkpoints[-1] / "trainer_state.json").exists():
        history = json.loads((checkpoints[-1] / "trainer_state.json").read_text()).get("log_history", [])
    eval_by_step = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h and "step" in h}
    val_loss = {str(c): eval_by_step.get(_step(c)) for c in checkpoints}
    summary: dict[str, Any] = {}
    log_jsonl = out_dir / "logging.jsonl"
    if log_jsonl.exists():
        for line in log_jsonl.read_text().splitlines():
            rec = json.loads(line)
            if "train_loss" in rec or "last_model_checkpoint" in rec:
                summary.update({k: v for k, v in rec.items() if k != "log_history"})
    return summary, val_loss


def run_sft(dataset_jsonl: str | Path, model_dir: str | Path, out_dir: str | Path, settings: Any = None,
            *, python: str | None = None, on_line=None) -> SftResult:
    """Fine-tune model_dir on dataset_jsonl into out_dir; return its checkpoints + validation losses.

    Raises JobFailed (a RuntimeError) with the log tail and ``out_dir/sft.log`` when ms-swift fails.
    """
    s = merge_settings(SftSettings, settings, "SFT")
    dataset_jsonl, out_dir = Path(dataset_jsonl).resolve(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = list_checkpoints(out_dir)
    if stale:
        if not s["overwrite"]:
            raise FileExistsError(f"{out_dir} already holds {len(stale)} checkpoints; set overwrite to replace them")
        for p in stale:
            shutil.rmtree(p)
    log_path = out_dir / "sft.log"
    args = sft_command(dataset_jsonl, Path(model_dir).resolve(), out_dir, s)
    py = python or sys.executable
    nproc = int(s.get("nproc_per_node") or 1)
    launcher = [py, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "swift.cli.sft"] if nproc > 1 \
        else [py, "-m", "swift.cli.sft"]
    env = {k: str(v) for k, v in (s.get("env") or {}).items()}
    run_job(launcher + args, log_path, what="ms-swift SFT", env=env, timeout_s=s.get("timeout_s"), cwd=out_dir,
            on_line=on_line)

    checkpoints = list_checkpoints(out_dir)
    if not checkpoints:
        raise JobFailed(f"ms-swift SFT wrote no checkpoint in {out_dir}; full log: {log_path}\n"
                        f"--- log tail ---\n{log_tail(log_path)}", log_path)
    metrics, val_loss = _read_metrics(out_dir, checkpoints)
    result = SftResult(out_dir, checkpoints, log_path, metrics, val_loss)
    (out_dir / "sft_result.json").write_text(json.dumps(result.to_json(), indent=2))
    return result


def load_sft_result(out_dir: str | Path) -> SftResult:
    """Re-read a finished run's ``sft_result.json`` (for cached/retried orchestration)."""
    d = json.loads((Path(out_dir) / "sft_result.json").read_text())
    return SftResult(Path(d["out_dir"]), [Path(c) for c in d["checkpoints"]], Path(d["log_path"]),
                     d["metrics"], d["val_loss"])


def is_lora_checkpoint(checkpoint_dir: str | Path) -> bool:
    return (Path(checkpoint_dir) / "adapter_config.json").exists()


def merge_lora(checkpoint_dir: str | Path, out_dir: str | Path | None = None, *, python: str | None = None,
               env: Mapping[str, str] | None = None) -> Path:
    """Merge a LoRA checkpoint into full weights (``swift export --merge_lora``); idempotent.

    The base model path comes from the checkpoint's args.json, so the base dir must still exist.
    Default output: ``<checkpoint>-merged`` (ms-swift's own convention).
    """
    ckpt = Path(checkpoint_dir).resolve()
    out = Path(out_dir).resolve() if out_dir else ckpt.with_name(ckpt.name + "-merged")
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log_path = out.with_name(out.name + ".merge.log")
    argv = [python or sys.executable, "-m", "swift.cli.export", "--adapters", str(ckpt),
            "--merge_lora", "true", "--output_dir", str(tmp)]
    run_job(argv, log_path, what="ms-swift LoRA merge", env=env)
    tmp.rename(out)
    return out
