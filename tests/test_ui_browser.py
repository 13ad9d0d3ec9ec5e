"""The Prefect dashboard shows a real curate run's artifacts: headless Chromium (Playwright) opens
the run's page and every artifact page of a tiny-model curate run and checks that the images load
(naturalWidth > 0) and the tables have their rows; docs/screenshots.py is run on the same run.

prefect_test_harness serves no UI (it starts its server with PREFECT_UI_ENABLED=0), so the run
goes to a real `prefect server start` (docs/screenshots.py's temporary_server: its own session,
the process group killed at the end, checked here). Skipped without Playwright or a Chromium
(/usr/bin/chromium, or UNDERCURVE_CHROMIUM): CI has neither. To see the skip:

    UNDERCURVE_CHROMIUM=/nonexistent .venv/bin/python -m pytest -q tests/test_ui_browser.py
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("UNDERCURVE_CHROMIUM", "/usr/bin/chromium")
if importlib.util.find_spec("playwright") is None:
    pytest.skip("no Playwright (.venv/bin/pip install -e '.[ui]')", allow_module_level=True)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no browser: {CHROMIUM} missing (apt-get install chromium, or set UNDERCURVE_CHROMIUM)",
                allow_module_level=True)

from conftest import demo_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "screenshots.py"
_spec = importlib.util.spec_from_file_location("docs_screenshots", SCRIPT)
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)  # standard library only at import

RENDERED = "() => [...document.images].map(i => i.naturalWidth)"
TABLES = "() => [...document.querySelectorAll('.artifact-data-view table')].map(t => t.rows.length)"


def _procs_with(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmd.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server with its UI, on its own database; nothing of it outlives the module."""
    with shots.temporary_server(prefect_home=str(tmp_path_factory.mktemp("prefect-home"))) as api_url:
        yield api_url
    port = api_url.rsplit(":", 1)[1].split("/")[0]
    assert not shots.health(api_url)
    assert not _procs_with(f"--port {port}"), "the Prefect server outlived the test"


@pytest.fixture(scope="module")
def curate_run(server, tiny_model, tmp_path_factory) -> dict:
    """A tiny curate run (the `undercurve` command line, against ``server``): its Prefect runs
    (``find_runs``: curate and its score-shards subflow) and every artifact's data."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from undercurve.registry import Registry

    workdir = tmp_path_factory.mktemp("ui-curate")
    cmd = [sys.executable, "-m", "flows.cli", "run", "configs/tiny.yaml", "--flow", "curate"]
    for k, v in {**demo_overrides(workdir), "model.path": str(tiny_model)}.items():
        cmd += ["--set", f"{k}={v}"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PREFECT_API_URL": server},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    flow_run_id = Registry(workdir / "registry.duckdb").query("SELECT prefect_flow_run_id FROM runs").item()
    runs = shots.find_runs(server, flow_run_id)
    with SyncPrefectClient(server) as client:
        ids = [r["id"] for r in runs]
        data = {str(a.id): a.data for a in client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))}
    return {"id": flow_run_id, "runs": runs, "data": data, "ui": server.removesuffix("/api")}


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = shots.launch(pw, CHROMIUM)
        try:
            yield browser.new_page(viewport=shots.VIEWPORT)
        finally:
            browser.close()


def _artifacts(curate_run, key_pattern: str = ".*", type_: str | None = None) -> list[dict]:
    return [a for r in curate_run["runs"] for a in r["artifacts"]
            if re.fullmatch(key_pattern, a["key"]) and type_ in (None, a["type"])]


def _open(page, curate_run, artifact: dict) -> None:
    """The artifact's page, once its content and every image have loaded."""
    page.goto(shots.artifact_url(curate_run["ui"], artifact["id"]), wait_until="networkidle")
    page.wait_for_selector(shots.ARTIFACT_READY, state="visible")
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    assert page.title().startswith(f"Artifact: {artifact['key']}"), page.title()


def _png_width(markdown: str) -> int:
    """The width in the header of the first PNG embedded in ``markdown`` as a data URI."""
    data = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown).group(1))
    return struct.unpack(">I", data[16:20])[0]


def test_the_run_page_lists_every_artifact(page, curate_run):
    from playwright.sync_api import expect

    curate, shards = curate_run["runs"]  # the run, then its subflow
    assert (curate["id"], curate["flow"], shards["flow"]) == (curate_run["id"], "curate", "score-shards")
    keys = {a["key"] for a in curate["artifacts"]}
    assert {"curation-summary", "curation-report", "decontamination-report", "curation-fig-scores-eas",
            "curation-fig-entropy-eas", "nightly-churn"} <= keys
    page.goto(f"{curate_run['ui']}/runs/flow-run/{curate['id']}", wait_until="networkidle")
    expect(page.locator(".p-tab#artifacts")).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 3000})  # the cards are drawn only once in view
    page.locator(".p-tab#artifacts").click()
    listed = page.wait_for_function(  # the cards' titles, once there are as many as artifacts
        """n => { const t = [...document.querySelectorAll('.flow-run-artifacts .artifact-card__title')];
                  return t.length === n && t.map(e => e.innerText.trim()); }""", arg=len(curate["artifacts"]))
    assert sorted(listed.json_value()) == sorted(a["key"] for a in curate["artifacts"])


def test_figure_pages_show_their_images(page, curate_run):
    figures = _artifacts(curate_run, r"curation-fig-.*")
    drawn = [a for a in figures if "data:image/png" in curate_run["data"][a["id"]]]
    assert len(drawn) >= 6, [a["key"] for a in figures]  # six score distributions at least
    for a in figures:
        _open(page, curate_run, a)
        widths = page.evaluate(RENDERED)
        if a in drawn:  # the PNG itself, decoded, at its own width: not a broken-image icon
            assert widths == [_png_width(curate_run["data"][a["id"]])], (a["key"], widths)
            assert page.locator(".artifact-data-view img").bounding_box()["height"] > 100, a["key"]
        else:  # e.g. the tiny model's empty pass_rate selection: the reason is shown instead
            assert widths == [] and "Figure missing" in page.inner_text(".artifact-data-view"), a["key"]


def test_table_pages_show_their_rows(page, curate_run):
    tables = _artifacts(curate_run, type_="table")
    assert {a["key"] for a in tables} >= {"curation-summary", "nightly-churn"}
    for a in tables:
        rows = json.loads(curate_run["data"][a["id"]])
        _open(page, curate_run, a)
        assert page.evaluate(TABLES) == [len(rows) + 1], a["key"]  # a header and one row per row
        text = page.inner_text(".artifact-data-view table")
        for row in rows:
            shown = [json.dumps(v) if isinstance(v, bool) else str(v) for v in row.values() if v is not None]
            assert all(v in text for v in shown), (a["key"], row)
    # rows per stage, as the flow counted them
    summary = next(json.loads(curate_run["data"][a["id"]]) for a in tables if a["key"] == "curation-summary")
    assert [r["stage"] for r in summary][:5] == ["ingest", "decontaminate", "length_cap", "score", "pass_rate"]


def test_markdown_tables_and_progress_bars_render(page, curate_run):
    for a in _artifacts(curate_run, "curation-report|decontamination-report|nightly-changes"):
        markdown = curate_run["data"][a["id"]]
        expected = len(re.findall(r"^\|?[ :-]*-{3,}[ :|-]*$", markdown, flags=re.M))  # | --- | --- | lines
        _open(page, curate_run, a)
        rows = page.evaluate(TABLES)
        assert expected >= 1 and len(rows) == expected and min(rows) >= 2, (a["key"], expected, rows)
    progress = _artifacts(curate_run, type_="progress")
    assert {a["key"] for a in progress} >= {"ingest", "decontamination", "scoring", "pass-rate"}
    for a in progress:
        _open(page, curate_run, a)
        shown = page.inner_text(".artifact-data-view .artifact-data-progress").strip()
        assert shown == f"Progress: {float(curate_run['data'][a['id']]):g}%", (a["key"], shown)


def test_curation_report_has_no_broken_image(page, curate_run):
    """curation-report repeats curation.md but names the figures' own artifacts (which embed the
    PNGs) instead of linking files beside curation.md, which the dashboard cannot load."""
    (report,) = _artifacts(curate_run, "curation-report")
    _open(page, curate_run, report)
    assert all(w > 0 for w in page.evaluate(RENDERED))  # a broken image has naturalWidth 0
    text = page.inner_text(".artifact-data-view")
    figures = [a["key"] for a in _artifacts(curate_run, "curation-fig-.*")]
    assert figures and all(f"{key}" in text for key in figures), figures


def test_screenshots_script_saves_every_page(curate_run, tmp_path):
    """The default run is the latest completed curate run: this one (progress bars left out: time)."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--api-url", curate_run["ui"] + "/api",
                           "--out", str(tmp_path), "--chromium", CHROMIUM, "--skip-type", "progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    expected = {f"{r['flow']}-run.png" for r in curate_run["runs"]}
    expected |= {f"{r['flow']}-{a['key']}.png" for r in curate_run["runs"] for a in r["artifacts"]
                 if a["type"] != "progress"}
    assert {p.name for p in tmp_path.iterdir()} == expected
    for png in tmp_path.iterdir():
        head = png.read_bytes()[:24]
        width, height = struct.unpack(">II", head[16:24])
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and width == 1280 and height >= 800, png.name
        assert f"saved {png}" in done.stdout
    assert re.search(r"curate-curation-fig-scores-eas\.png .*images 1,", done.stdout)
    assert re.search(r"curate-curation-summary\.png .*tables: \d+ rows", done.stdout)


def test_screenshots_script_says_what_is_missing(curate_run, tmp_path):
    def script(*args: str, **env: str):
        return subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, env={**os.environ, **env})

    api = curate_run["ui"] + "/api"
    gone = script("--api-url", api, "--run", "no-such-run", "--chromium", CHROMIUM)
    assert gone.returncode == 1 and "no flow run with id or name 'no-such-run'" in gone.stderr, gone.stderr
    dead = script("--api-url", "http://127.0.0.1:9/api", "--chromium", CHROMIUM)
    assert dead.returncode == 1 and "Prefect server unreachable at http://127.0.0.1:9/api" in dead.stderr, dead.stderr
    # no Chromium here and none of Playwright's own: exit 2 before any server is asked
    none = script("--api-url", api, "--chromium", "/nonexistent/chromium", PLAYWRIGHT_BROWSERS_PATH=str(tmp_path))
    assert none.returncode == 2 and "no browser" in none.stderr, none.stderr
    assert not list(tmp_path.iterdir())
