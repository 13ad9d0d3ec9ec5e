"""Bad settings fail in seconds, in a few lines that name the key, before anything starts."""

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main

REPO = Path(__file__).resolve().parent.parent

BAD = [  # (--set overrides, words the message must contain)
    (["selection.budgte=3"], ["selection.budgte", "did you mean 'selection.budget'"]),
    (["scorng.mode=plain"], ["'scorng'", "did you mean 'scoring'"]),
    (["selection.budget=0"], ["selection.budget", "greater than or equal to 1"]),
    (["scoring.shard_size=-4"], ["scoring.shard_size", "-4"]),
    (["pass_rate.rollouts=0"], ["pass_rate.rollouts"]),
    (["corpus.limit=-1"], ["corpus.limit"]),
    (["scoring.top_k=0"], ["scoring.top_k", "-1 for the full vocabulary"]),
    (["scoring.mode=probes"], ["scoring.mode", "'probe' or 'plain'"]),
    (["selection.budget=many"], ["selection.budget", "'many'"]),
    (["selection.strategies=[]"], ["selection.strategies"]),
    (["selection.strategies=[eas, eas]"], ["listed more than once", "eas"]),
    (["selection.strategies=[eas, vibes]"], ["unknown strategy 'vibes'", "random"]),
    (["scoring.edis.units=decibels"], ["scoring.edis.units", "'bits' or 'nats'"]),
    (["model.path=./no/such/model"], ["model.path", "does not exist"]),
    (["corpus.source=no/such/corpus.jsonl"], ["corpus.source", "does not exist"]),
    (["selection.budget.x=1"], ["selection.budget is a value"]),
    (["novalue"], ["KEY=VALUE"]),
    (["pass_rate.enabled=false"], ["['pass_rate'] need the pass-rate rollouts", "pass_rate.enabled is false"]),
]


@pytest.mark.parametrize("sets,words", BAD, ids=[b[0][0] for b in BAD])
def test_bad_setting_is_one_short_message_and_nothing_starts(sets, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = ["run", "configs/tiny.yaml", "--set", f"workdir={tmp_path / 'w'}"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert len(err.strip().splitlines()) <= 4 and "Traceback" not in err
    assert not (tmp_path / "w").exists()  # nothing written, no registry, no run folder


def test_bad_config_files(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("selection: {budget: [1\n")
    for cfg, words in [(tmp_path / "missing.yaml", "not found"), (tmp_path / "list.yaml", "must be a mapping"),
                       (tmp_path / "broken.yaml", "not valid YAML")]:
        assert main(["check", str(cfg)]) == 2
        assert words in capsys.readouterr().err


def test_check_accepts_the_shipped_configs(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    for cfg, flow in [("configs/tiny.yaml", "pipeline"), ("configs/paper.yaml", "pipeline"),
                      ("configs/nightly.yaml", "curate"), ("configs/validate_demo.yaml", "validate")]:
        assert main(["check", cfg, "--flow", flow]) == 0, capsys.readouterr().err
    assert "settings are valid" in capsys.readouterr().out


def test_bad_setting_from_the_command_line_exits_2_without_starting_prefect(tmp_path):
    """A real process: exit code 2, a one-line message, no Prefect server, no traceback."""
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", "configs/tiny.yaml", "--set", "selection.budget=-5",
                          "--set", f"workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("undercurve: bad settings:") and len(out.stderr.strip().splitlines()) == 1
    assert "prefect" not in (out.stdout + out.stderr).lower()
    assert list(tmp_path.iterdir()) == []


def test_sft_and_eval_settings_are_typed_and_checked_at_load(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["check", "--set", "train.sft.learning_rat=1e-4"]) == 2
    assert "did you mean 'train.sft.learning_rate'" in capsys.readouterr().err
    assert main(["check", "--set", "train.sft.tuner_type=qlora"]) == 2
    assert "train.sft.tuner_type" in capsys.readouterr().err
    assert main(["check", "--set", "eval.settings.eval_type=openai"]) == 2
    assert "eval.settings.eval_type" in capsys.readouterr().err


def test_config_reference_is_up_to_date():
    from undercurve.config import reference_markdown

    assert (REPO / "docs" / "CONFIG.md").read_text() == reference_markdown(), \
        "regenerate: python -m undercurve.config > docs/CONFIG.md"
