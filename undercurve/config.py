"""Typed settings, loaded from YAML (safe_load) and validated with pydantic.

Unknown keys are errors: a typo in a nightly config must fail loudly, not be ignored.
Relative paths are resolved against the current working directory at load time.
"""

from __future__ import annotations

import difflib
import glob
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from undercurve.answers import DEFAULT_BOX_OPENERS
from undercurve.eas import EdisParams
from undercurve.io import fingerprint

_EDIS = EdisParams()  # the defaults, written once in undercurve.eas

_S = TypeVar("_S", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Strict):
    # "tiny" builds a random tiny Qwen2 offline; otherwise a local dir or a hub id.
    path: str = "tiny"
    trust_remote_code: bool = False
    # For "tiny": where to build it (under the work dir by default).
    tiny_dir: str | None = None


class CorpusSettings(_Strict):
    # "demo" generates GSM8K-style problems offline; else a hub id, a JSONL or Parquet path.
    source: str = "demo"
    split: str = "train"
    demo_size: int = Field(48, ge=1)
    limit: int | None = Field(None, ge=1)  # read at most this many rows (smoke runs)
    seed: int = 0


class DecontamSettings(_Strict):
    enabled: bool = True
    suites: list[Any] = Field(default_factory=lambda: ["gsm8k"])
    local_paths: dict[str, str] = Field(default_factory=dict)
    ngram_n: int = Field(13, ge=1)
    ngram_min_matches: int = Field(1, ge=1)
    embedding: bool = False
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    cosine_threshold: float | None = Field(None, gt=0, le=1)  # None: the library default
    cache_dir: str | None = None


class EdisSettings(_Strict):
    """EDIS thresholds (SPEC section 2); ``units`` is the log base they are in."""

    window: int = Field(_EDIS.window, ge=1)
    tau_burst: float = _EDIS.tau_burst
    tau_rebound: float = _EDIS.tau_rebound
    units: Literal["bits", "nats"] = _EDIS.units

    def params(self) -> EdisParams:
        return EdisParams(**self.model_dump())


class AnswerSettings(_Strict):
    # Which boxes hold a final answer, everywhere one is read (ingest, rollouts, scoring).
    # The paper names only \boxed{; add "\\fbox{" here to accept \fbox{} too.
    box_openers: list[str] = Field(default_factory=lambda: list(DEFAULT_BOX_OPENERS), min_length=1)


class ScoringSettings(_Strict):
    engine: Literal["torch", "vllm"] = "torch"
    mode: Literal["probe", "plain"] = "probe"
    answer_prefix_tokens: int = Field(0, ge=0)  # L-1 in the paper's notation
    top_k: int = Field(20, ge=-1)  # vLLM engine only; -1 = the full vocabulary (exact, slow)
    batch_tokens: int = Field(16384, ge=1)
    device: str = "auto"
    dtype: str = "auto"
    shard_size: int = Field(64, ge=1)
    # Scale-out of the model stages' shards, the torch engine's scoring shards and the rollout
    # shards (Dask via prefect-dask): 1 = in the flow process; N > 1 = a local cluster of N
    # worker processes; or an existing cluster's address (multi-node), with e.g.
    # dask_cuda.LocalCUDACluster for one worker per GPU (data-parallel rollouts, one engine each).
    workers: int = Field(1, ge=1)
    dask_address: str | None = None
    dask_cluster_class: str | None = None
    # Where a local cluster's scheduler and dashboard listen: loopback unless a cluster needs more.
    dask_host: str = "127.0.0.1"
    dask_dashboard_address: str | None = "127.0.0.1:0"  # None: no dashboard
    edis: EdisSettings = Field(default_factory=EdisSettings)

    @property
    def on_cluster(self) -> bool:
        """Shards go to Dask workers (else they run in the flow process)."""
        return self.workers > 1 or bool(self.dask_address)

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int) -> int:
        if v == 0:
            raise ValueError("top_k must be >= 1, or -1 for the full vocabulary")
        return v


class PassRateSettings(_Strict):
    enabled: bool = True
    engine: Literal["auto", "vllm", "hf"] = "auto"  # auto: vLLM on a GPU, transformers on a CPU
    rollouts: int = Field(4, ge=1)
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    shard_size: int = Field(256, ge=1)
    seed: int = 0
    # a rollout without \boxed{} or '####' is judged by its last number (small models often
    # answer in plain text); off: such a rollout counts as wrong, as in the paper
    last_number_fallback: bool = False


class CacheSettings(_Strict):
    """Per-sample results (scores, rollouts) keyed by content, shared by every run of the
    workdir: a nightly run recomputes only the samples it has not seen (``undercurve cache``)."""

    enabled: bool = True
    dir: str | None = None  # default: <workdir>/cache
    # after each curate run, evict least recently used results beyond this size (never the
    # run's own); null: keep everything
    max_gb: float | None = Field(None, gt=0)


class RetentionSettings(_Strict):
    """Run folders kept per series (a run_name template such as "nightly-{date}")."""

    # after a completed curate run, remove the older folders of its series beyond the newest
    # keep_runs (never one whose run is RUNNING); null: keep every folder
    keep_runs: int | None = Field(None, ge=1)


class SelectionSettings(_Strict):
    budget: int = Field(5000, ge=1)
    # built-in names (undercurve/strategies/) or custom ones as "package.module:Class"
    strategies: list[str] = Field(default_factory=lambda: ["random", "length", "pass_rate", "eas"], min_length=1)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # strategy name -> constructor options
    seed: int = 0

    @field_validator("strategies")
    @classmethod
    def _known_and_unique(cls, v: list[str]) -> list[str]:
        from undercurve.strategies import resolve

        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"listed more than once: {dup}")
        for spec in v:
            resolve(spec)  # ValueError names the choices
        return v

    def make(self) -> list:
        """The configured strategies, constructed (bad options fail here, before any work)."""
        from undercurve.strategies import make, resolve

        return [make(spec, self.options.get(resolve(spec).name)) for spec in self.strategies]

    @model_validator(mode="after")
    def _options_valid(self):
        self.make()
        return self


class SftSettings(_Strict):
    """ms-swift SFT of one selection (undercurve.train); identical for every strategy.
    None means: do not pass the flag, ms-swift's own default applies."""

    tuner_type: Literal["full", "lora"] = "full"
    model_type: str | None = None  # ms-swift model type; None -> config.json's model_type (qwen2, llama)
    template: str | None = None  # ms-swift template; None -> qwen for qwen2, llama3 for llama
    max_length: int | None = Field(4096, ge=1)
    num_train_epochs: float | None = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set (tests, smoke runs)
    learning_rate: float = Field(1e-5, gt=0)
    seed: int = 42
    per_device_train_batch_size: int = Field(1, ge=1)
    per_device_eval_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(16, ge=1)  # always explicit: ms-swift otherwise derives one
    save_strategy: Literal["epoch", "steps"] = "epoch"
    save_steps: int | None = Field(None, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # None -> same as save_steps
    split_dataset_ratio: float = Field(0.05, ge=0, lt=1)  # held-out share for the validation loss
    save_only_model: bool = True  # no optimizer state: checkpoints are for evaluation only
    logging_steps: int = Field(5, ge=1)
    warmup_ratio: float | None = Field(None, ge=0, le=1)
    lr_scheduler_type: str | None = None
    torch_dtype: str | None = None  # e.g. bfloat16 on GPU
    gradient_checkpointing: bool | None = None
    attn_impl: str | None = None  # e.g. flash_attn
    deepspeed: str | None = None  # zero0..zero3, zero3_offload, or a JSON path (GPU only)
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(32, ge=1)
    target_modules: str | list[str] = "all-linear"
    dataset_num_proc: int = Field(1, ge=1)
    dataloader_num_workers: int | None = Field(None, ge=0)
    nproc_per_node: int = Field(1, ge=1)  # >1 launches torchrun
    extra_args: list[str] = Field(default_factory=list)  # raw ms-swift flags appended last
    env: dict[str, str] = Field(default_factory=dict)  # extra environment for the child
    timeout_s: float | None = Field(None, gt=0)
    overwrite: bool = False  # remove existing checkpoint-* dirs in the output folder before training

    @model_validator(mode="after")
    def _steps_need_save_steps(self):
        if self.save_strategy == "steps" and not self.save_steps:
            raise ValueError("save_strategy 'steps' needs save_steps")
        return self


class EvalToolSettings(_Strict):
    """evalscope evaluation of one checkpoint (undercurve.evaluate.run_eval)."""

    eval_type: Literal["llm_ckpt", "openai_api"] = "llm_ckpt"
    api_url: str | None = None  # openai_api: e.g. http://127.0.0.1:8000/v1
    api_key: str = "EMPTY"
    served_model_name: str | None = None  # openai_api: model name the server knows; None -> checkpoint path
    # DeepSeek-R1 distill recommended sampling; max_tokens bounds the reasoning length
    generation_config: dict[str, Any] = Field(
        default_factory=lambda: {"max_tokens": 32768, "temperature": 0.6, "top_p": 0.95})
    eval_batch_size: int | None = Field(None, ge=1)  # None -> evalscope's default (1 local, larger for APIs)
    model_args: dict[str, Any] = Field(default_factory=dict)  # llm_ckpt: e.g. {"precision": "torch.bfloat16"}
    dataset_hub: Literal["modelscope", "huggingface"] = "modelscope"  # for benchmarks given as None (hub)
    limit: int | None = Field(None, ge=1)  # first N problems per benchmark (smoke runs)
    seed: int = 42
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, gt=0)


class TrainSettings(_Strict):
    sft: SftSettings = Field(default_factory=SftSettings)
    top_k_checkpoints: int = Field(3, ge=1)  # evaluated per strategy, lowest validation loss first


class EvalSettings(_Strict):
    # evalscope benchmark -> local file/dir of {problem, answer} records, or null (from the hub)
    benchmarks: dict[str, str | None] = Field(default_factory=lambda: {"aime24": None, "aime25": None})
    repeats: int = Field(32, ge=1)
    settings: EvalToolSettings = Field(default_factory=EvalToolSettings)


class RunSettings(_Strict):
    """What every flow's settings share: where the run's files and the registry live."""

    # the run's folder under workdir; may be a template, expanded once when the settings load:
    # {date} (UTC YYYY-MM-DD) and {time} (UTC HHMMSS), e.g. "nightly-{date}": a folder per night
    run_name: str = "demo"
    # the series of runs this one belongs to (retention, the nightly diff): set to run_name's
    # template when it has placeholders; null: run_name itself. Normally left unset.
    run_series: str | None = None
    workdir: str = "runs"
    registry: str | None = None  # default: <workdir>/registry.duckdb

    @model_validator(mode="before")
    @classmethod
    def _series_from_template(cls, data: Any) -> Any:
        from undercurve.nightly import is_template

        if isinstance(data, dict) and isinstance(data.get("run_name"), str) and is_template(data["run_name"]):
            data = {**data, "run_series": data.get("run_series") or data["run_name"]}
        return data

    @field_validator("run_name", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        from undercurve.nightly import expand

        return expand(v) if isinstance(v, str) else v  # ValueError names the bad placeholder

    @field_validator("run_series")
    @classmethod
    def _series_placeholders(cls, v: str | None) -> str | None:
        from undercurve.nightly import placeholders

        if v is not None:
            placeholders(v)  # ValueError names the bad placeholder
        return v

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("run_name must be a plain folder name")
        return v

    @model_validator(mode="after")
    def _name_in_series(self):
        from undercurve.nightly import series_pattern

        if self.run_series is not None and not series_pattern(self.run_series).fullmatch(self.run_name):
            raise ValueError(f"run_name {self.run_name!r} is not a name of run_series {self.run_series!r}")
        return self

    @property
    def series(self) -> str:
        """The run's series: its run name template, or the plain run name."""
        return self.run_series or self.run_name

    @property
    def run_dir(self) -> Path:
        return Path(self.workdir) / self.run_name

    @property
    def registry_path(self) -> Path:
        return Path(self.registry) if self.registry else Path(self.workdir) / "registry.duckdb"

    def fingerprint(self) -> str:
        return fingerprint(self.model_dump())


class Settings(RunSettings):
    max_tokens: int = Field(20480, ge=1)  # length cap (prompt + response, chat template applied)
    # Name of a Prefect global concurrency limit held by every accelerator stage (scoring,
    # rollouts, SFT, evaluation), e.g. "gpu" made with `prefect gcl create gpu --limit 1`:
    # concurrent runs on one GPU machine then take turns. strict: a missing limit is an error.
    gpu_concurrency_limit: str | None = None
    model: ModelSettings = Field(default_factory=ModelSettings)
    answers: AnswerSettings = Field(default_factory=AnswerSettings)
    corpus: CorpusSettings = Field(default_factory=CorpusSettings)
    decontam: DecontamSettings = Field(default_factory=DecontamSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    pass_rate: PassRateSettings = Field(default_factory=PassRateSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)

    @property
    def cache_dir(self) -> Path:
        """Where content-keyed results live: shared by every run of the workdir, or with
        ``cache.enabled: false`` this run's own (reused only by a rerun of the same name)."""
        if not self.cache.enabled:
            return self.run_dir / "cache"
        return Path(self.cache.dir) if self.cache.dir else Path(self.workdir) / "cache"


    @model_validator(mode="after")
    def _strategies_have_their_stages(self):
        if not self.pass_rate.enabled:
            needing = [s.name for s in self.selection.make() if "pass_rate" in s.stages()]
            if needing:
                raise ValueError(f"selection.strategies {needing} need the pass-rate rollouts, "
                                 "but pass_rate.enabled is false")
        return self

    @model_validator(mode="after")
    def _inputs_exist(self):
        _check_local(self.model.path, "model.path", named=("tiny", "smollm2"))
        _check_local(self.corpus.source, "corpus.source", named=("demo",))
        return self


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name


def _check_local(value: str, key: str, named: tuple[str, ...]) -> None:
    """A value that is not a known name and not hub-id shaped must exist on disk (globs: match)."""
    if value in named or Path(value).exists():
        return
    if any(c in value for c in "*?[") and glob.glob(value):
        return
    data_file = re.search(r"\.(jsonl|json|parquet|csv|arrow|gz|zst|txt)$", value, re.IGNORECASE)
    if _HUB_ID.match(value) and not data_file:
        return  # resolved on the hub when the run starts
    raise ValueError(f"{key}: {value!r} does not exist (a local path), is not a hub id (org/name), "
                     f"and is not one of {list(named)}")


class ConfigError(ValueError):
    """A bad setting, said in a few lines that name the key, the value and what is allowed."""


def load_settings(path: str | Path | None = None, overrides: dict | None = None) -> Settings:
    """YAML file (or the embedded defaults) + nested overrides -> validated Settings."""
    return load_yaml_settings(Settings, path, overrides)


def load_yaml_settings(cls: type[_S], path: str | Path | None = None, overrides: dict | None = None) -> _S:
    """YAML file (safe_load) + dotted overrides ("scoring.mode": "plain") -> validated ``cls``.

    Raises ``ConfigError`` (a ValueError) with a short message for every kind of bad setting."""
    where = str(path) if path is not None else "settings"
    data: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, cls, where)) from None


def _set_dotted(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for i, k in enumerate(keys[:-1]):
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: i + 1])} is a value, not a section")
    data[keys[-1]] = value


def known_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted setting name of ``cls`` (sections and leaves)."""
    out = []
    for name, f in cls.model_fields.items():
        out.append(prefix + name)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += known_keys(ann, f"{prefix}{name}.")
    return out


def _describe(err: ValidationError, cls: type[BaseModel], where: str, most: int = 5) -> str:
    keys = known_keys(cls)
    lines = []
    for e in err.errors()[:most]:
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
            siblings = [k for k in keys if k.startswith(parent) and "." not in k[len(parent):]]
            guess = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            lines.append(f"unknown setting {key!r}{hint}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"{key or '(top level)'} = {shown[:80]}: {msg}" if key else msg)
    more = len(err.errors()) - most
    if more > 0:
        lines.append(f"... and {more} more")
    return f"{where}: " + ("\n  ".join(lines) if len(lines) == 1 else "\n  " + "\n  ".join(lines))


def reference_markdown() -> str:
    """docs/CONFIG.md: every setting of the curate/pipeline config, its type and default,
    generated from the models above (``python -m undercurve.config > docs/CONFIG.md``)."""
    import json

    lines = ["# Configuration reference", "",
             "Generated from `undercurve/config.py` by `python -m undercurve.config > docs/CONFIG.md`;",
             "a test fails when it is out of date. Keys are dotted paths into the YAML file (and `--set`).",
             "`null` means: not set (the tool's own default applies). Check a config without running it:",
             "`undercurve check CONFIG`.", "", "| key | type | default |", "|---|---|---|"]

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, f in cls.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = f.get_default(call_default_factory=True)
            kind = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("|", "or")
            lines.append(f"| `{prefix}{name}` | `{kind}` | `{json.dumps(default, default=str)}` |")

    walk(Settings, "")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
