"""Shared, session-scoped fixtures: one tiny model, one Prefect harness, one vLLM engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

TINY_TEXTS = [
    "Tom has 3 apples and buys 4 more. How many apples does Tom have?",
    "<think>3 + 4 = 7. So the answer is 7.</think> Tom has 3 + 4 = 7 apples. \\boxed{7}",
    "A train travels 60 km per hour for 2 hours. How far does it go?",
    "<think>60 * 2 = 120</think> The train goes 120 km. The answer is \\boxed{120}.",
    "Compute \\frac{1}{2} + \\frac{1}{3}. \\boxed{\\frac{5}{6}} #### 42",
    "Let x = 12. Then 2x - 5 = 19, so the answer is \\boxed{19}.",
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny Qwen2 + trained BPE tokenizer, built once per test session."""
    from undercurve.tiny_model import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("models") / "tiny-qwen2", TINY_TEXTS * 20, vocab_size=400)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for the whole session: flows run for real."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def tokenised_ids(monkeypatch) -> list[str]:
    """The ids of the rows the length cap tokenises, in order (a spy on ``textlen.token_lengths``,
    which still counts): what a cached count saves."""
    import undercurve.textlen as textlen

    ids, real = [], textlen.token_lengths

    def spy(tok, df, *a):
        ids.extend(df["id"])
        return real(tok, df, *a)

    monkeypatch.setattr(textlen, "token_lengths", spy)
    return ids


def demo_overrides(workdir, **extra) -> dict:
    """The embedded demo config, made smaller for tests."""
    base = {
        "workdir": str(workdir),
        "corpus.demo_size": 20,
        "scoring.shard_size": 6,
        "pass_rate.max_tokens": 12,
        "pass_rate.shard_size": 8,
        "selection.budget": 6,
    }
    return {**base, **extra}


def have_vllm() -> bool:
    """Is the separate vLLM environment installed? (vLLM tests skip cleanly without it.)"""
    from undercurve.vllm_runtime import VllmEnvironmentMissing, vllm_python

    try:
        vllm_python()
        return True
    except VllmEnvironmentMissing:
        return False
