"""Typed settings, loaded from YAML (safe_load) and validated with pydantic.

Unknown keys are errors: a typo in a nightly config must fail loudly, not be ignored.
Relative paths are resolved against the current working directory at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    demo_size: int = 48
    limit: int | None = None  # read at most this many rows (smoke runs)
    seed: int = 0


class DecontamSettings(_Strict):
    enabled: bool = True
    suites: list[Any] = Field(default_factory=lambda: ["gsm8k"])
    local_paths: dict[str, str] = Field(default_factory=dict)
    ngram_n: int = 13
    ngram_min_matches: int = 1
    embedding: bool = False
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    cosine_threshold: float | None = None  # None: the library default
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
    answer_prefix_tokens: int = 0  # L-1 in the paper's notation
    top_k: int = 20  # vLLM engine only
    batch_tokens: int = 16384
    device: str = "auto"
    dtype: str = "auto"
    shard_size: int = 64
    # Scale-out of the torch engine's shards (Dask via prefect-dask): 1 = in the flow process;
    # N > 1 = a local cluster of N worker processes; or an existing cluster's address
    # (multi-node), with e.g. dask_cuda.LocalCUDACluster for one worker per GPU.
    workers: int = 1
    dask_address: str | None = None
    dask_cluster_class: str | None = None
    edis: EdisSettings = Field(default_factory=EdisSettings)


class PassRateSettings(_Strict):
    enabled: bool = True
    rollouts: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 1024
    shard_size: int = 256
    seed: int = 0


class SelectionSettings(_Strict):
    budget: int = 5000
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


class TrainSettings(_Strict):
    # Passed to undercurve.train.run_sft (keys: train.SFT_DEFAULTS); identical for every strategy.
    sft: dict[str, Any] = Field(default_factory=dict)
    top_k_checkpoints: int = 3  # evaluated per strategy, lowest validation loss first


class EvalSettings(_Strict):
    # evalscope benchmark -> local file/dir of {problem, answer} records, or null (from the hub)
    benchmarks: dict[str, str | None] = Field(default_factory=lambda: {"aime24": None, "aime25": None})
    repeats: int = 32
    # Passed to undercurve.evaluate.run_eval (keys: evaluate.EVAL_DEFAULTS).
    settings: dict[str, Any] = Field(default_factory=dict)


class RunSettings(_Strict):
    """What every flow's settings share: where the run's files and the registry live."""

    run_name: str = "demo"
    workdir: str = "runs"
    registry: str | None = None  # default: <workdir>/registry.duckdb

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("run_name must be a plain folder name")
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.workdir) / self.run_name

    @property
    def registry_path(self) -> Path:
        return Path(self.registry) if self.registry else Path(self.workdir) / "registry.duckdb"

    def fingerprint(self) -> str:
        return fingerprint(self.model_dump())


class Settings(RunSettings):
    max_tokens: int = 20480  # length cap (prompt + response, chat template applied)
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
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)


def load_settings(path: str | Path | None = None, overrides: dict | None = None) -> Settings:
    """YAML file (or the embedded defaults) + nested overrides -> validated Settings."""
    return load_yaml_settings(Settings, path, overrides)


def load_yaml_settings(cls: type[_S], path: str | Path | None = None, overrides: dict | None = None) -> _S:
    """YAML file (safe_load) + dotted overrides ("scoring.mode": "plain") -> validated ``cls``."""
    data: dict = {}
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return cls.model_validate(data)


def _set_dotted(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    data[keys[-1]] = value
