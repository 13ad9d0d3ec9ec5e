"""The `undercurve` CLI on a real DuckDB registry: exit codes, JSON, plain text off a terminal,
the dashboard URL of each run and `undercurve open`."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from undercurve.registry import Registry

REPO = Path(__file__).resolve().parents[1]
FLOW_RUN = "0b1c2d3e-0000-4000-8000-000000000001"
UI = "http://ui.example:4200"
LONG_REASON = "ValueError: " + "a reason longer than any terminal is wide " * 3


@pytest.fixture
def registry(tmp_path) -> tuple[Path, dict]:
    """Two finished runs: one started by a Prefect flow, one without a flow run id."""
    reg = Registry(tmp_path / "registry.duckdb", create=True)
    flow_run = reg.start_run("curate", "nightly", {}, "h", prefect_flow_run_id=FLOW_RUN)
    plain = reg.start_run("curate", "by-hand", {}, "h")
    samples = tmp_path / "samples.parquet"
    pl.DataFrame({"id": ["a", "b"]}).write_parquet(samples)
    parent = reg.add_artifact(flow_run, "ingest", "samples", samples, 2)
    reg.add_artifact(flow_run, "select", "selection:eas", samples, 1, parents=[parent])
    reg.add_set_aside(flow_run, "ingest", pl.DataFrame({"reason": ["bad json [line 3]"]}))
    reg.add_selection(flow_run, pl.DataFrame({"strategy": ["eas"], "rank": [1], "id": ["a"], "score": [0.5]}))
    reg.finish_run(flow_run, "COMPLETED", {"stages": [{"stage": "ingest", "rows_in": 3, "kept": 2, "set_aside": 1}]})
    reg.finish_run(plain, "FAILED", reason=LONG_REASON)
    return reg.path, {"flow_run": flow_run, "plain": plain}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user's shell runs it: a real process, stdout a pipe (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PREFECT_UI_URL": UI, **(env or {})})


def _cli_on_a_terminal(*args: str, env: dict) -> str:
    """stdout of the CLI when it is a terminal (a pseudo-terminal)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, stdout=follower,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TERM": "xterm-256color", **env})
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return out.decode()


def test_unknown_run_exits_1(registry, capsys):
    path, _ = registry
    for command in ("show", "open"):
        assert main([command, "no-such-run", "--registry", str(path)]) == 1
        assert capsys.readouterr().err.strip() == f"undercurve: no run 'no-such-run' in {path}"


def test_a_missing_registry_is_exit_1_and_never_created(tmp_path, capsys):
    missing = tmp_path / "new.duckdb"
    for argv in (["runs"], ["compare"], ["show", "x"], ["open", "x"]):
        assert main([*argv, "--registry", str(missing)]) == 1
        assert "does not exist (a read command never creates one)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_settings_and_bad_usage_exit_2(tmp_path, capsys):
    assert main(["check", "configs/tiny.yaml", "--set", "selection.budget=-5"]) == 2
    assert capsys.readouterr().err.startswith("undercurve: bad settings:")
    assert main(["runs", "--config", str(tmp_path / "nope.yaml")]) == 2  # a read command names its registry by config
    assert main(["run", "--flow", "everything"]) == 2
    assert main(["shows"]) == 2


def test_json_for_scripts(registry, capsys, monkeypatch):
    monkeypatch.setenv("PREFECT_UI_URL", UI + "/")
    path, ids = registry
    assert main(["runs", "--registry", str(path), "--json"]) == 0
    runs = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert runs[ids["flow_run"]]["dashboard_url"] == f"{UI}/runs/flow-run/{FLOW_RUN}"
    assert runs[ids["plain"]]["dashboard_url"] is None and runs[ids["plain"]]["reason"] == LONG_REASON
    assert main(["show", ids["flow_run"], "--registry", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run"][0]["status"] == "COMPLETED" and shown["run"][0]["dashboard_url"].endswith(FLOW_RUN)
    assert [a["kind"] for a in shown["artifacts"]] == ["samples", "selection:eas"]
    assert shown["lineage"] == [{"child": "select:selection:eas", "parent": "ingest:samples"}]
    assert shown["set_aside"] == [{"stage": "ingest", "reason": "bad json [line 3]", "n": 1}]
    assert main(["compare", "--registry", str(path), "--json"]) == 0
    sel = json.loads(capsys.readouterr().out)["selections"]
    assert [(s["run_name"], s["strategy"], s["n"], s["mean_score"]) for s in sel] == [("nightly", "eas", 1, 0.5)]


def test_tables_are_plain_text_off_a_terminal(registry):
    path, ids = registry
    for args in (["runs"], ["show", ids["flow_run"]], ["compare"]):
        out = _cli(*args, "--registry", str(path))
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout and out.stdout.strip()
    runs = _cli("runs", "--registry", str(path)).stdout
    row = next(line for line in runs.splitlines() if ids["plain"] in line)
    assert "FAILED" in row and LONG_REASON.strip() in row  # one row, one line, never wrapped
    assert f"  {ids['flow_run']}  {UI}/runs/flow-run/{FLOW_RUN}" in runs.splitlines()  # each known dashboard page
    assert "/runs/flow-run/" not in runs.split(ids["plain"])[1].split("\n")[0]
    shown = _cli("show", ids["flow_run"], "--registry", str(path)).stdout
    assert "bad json [line 3]" in shown  # a reason is text, not rich markup
    assert "select:selection:eas" in shown and "ingest:samples" in shown
    plain = _cli("show", ids["plain"], "--registry", str(path)).stdout
    assert LONG_REASON.strip() in plain and "(no Prefect flow run recorded)" in plain


def test_colours_on_a_terminal_unless_no_color(registry):
    path, _ = registry
    coloured = _cli_on_a_terminal("runs", "--registry", str(path), env={"PREFECT_UI_URL": UI, "COLUMNS": "200"})
    assert "\x1b[" in coloured and "COMPLETED" in coloured
    plain = _cli_on_a_terminal("runs", "--registry", str(path), env={"PREFECT_UI_URL": UI, "COLUMNS": "200", "NO_COLOR": "1"})
    assert "\x1b[" not in plain and "COMPLETED" in plain


def test_open_prints_or_opens_the_dashboard_page(registry, capsys, monkeypatch):
    import webbrowser

    path, ids = registry
    monkeypatch.setenv("PREFECT_UI_URL", UI)
    opened = []
    monkeypatch.setattr(webbrowser, "open", opened.append)  # no browser on a test machine
    assert main(["open", ids["flow_run"], "--registry", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{UI}/runs/flow-run/{FLOW_RUN}" and opened == []
    assert main(["open", ids["flow_run"], "--registry", str(path), "--browser"]) == 0
    assert opened == [f"{UI}/runs/flow-run/{FLOW_RUN}"]
    assert main(["open", ids["plain"], "--registry", str(path), "--browser"]) == 1
    err = capsys.readouterr().err
    assert "has no Prefect flow run recorded" in err and len(err.strip().splitlines()) == 1
    assert opened == [f"{UI}/runs/flow-run/{FLOW_RUN}"]


@pytest.mark.parametrize("api,ui", [("http://prefect.example:4200/api", "http://prefect.example:4200"),
                                    ("https://api.prefect.cloud/api/accounts/a1/workspaces/w1",
                                     "https://app.prefect.cloud/account/a1/workspace/w1")])
def test_without_an_override_the_dashboard_is_prefect_s_ui_for_its_api(registry, api, ui):
    path, ids = registry
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_UI_URL"}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "open", ids["flow_run"], "--registry", str(path)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env={**env, "PREFECT_API_URL": api})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{ui}/runs/flow-run/{FLOW_RUN}"


def test_cache_command_shows_prunes_and_fails_cleanly(tmp_path, capsys):
    import polars as pl

    from flows.cli import main
    from undercurve.cache import KEY, ResultCache

    assert main(["cache", "--dir", str(tmp_path / "none")]) == 1  # no cache there: an error, nothing created
    assert not (tmp_path / "none").exists()
    cache = ResultCache.open(tmp_path / "c", "score", {"model_identity": "sha256:abc"})
    cache.write(["k"], pl.DataFrame({KEY: ["k"]}))
    capsys.readouterr()
    assert main(["cache", "--dir", str(tmp_path / "c"), "--json"]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)["cache"]
    assert [(r["kind"], r["parts"], r["model"]) for r in shown] == [("score", 1, "sha256:abc")]
    assert main(["cache", "prune", "--dir", str(tmp_path / "c")]) == 2  # say what to prune
    assert main(["cache", "prune", "--dir", str(tmp_path / "c"), "--all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pruned"][0]["parts_removed"] == 1 and cache.parts() == []
