"""Screenshots of a finished run in the Prefect dashboard (the images of docs/dashboard.md).

    .venv/bin/python docs/screenshots.py                                   # latest completed curate run
    .venv/bin/python docs/screenshots.py --flow pipeline                   # latest completed pipeline run
    .venv/bin/python docs/screenshots.py --api-url http://127.0.0.1:4200/api --run <flow run id or name>

The server is --api-url, else PREFECT_API_URL, else a temporary `prefect server start` on the
local Prefect database (where `make demo` leaves its runs), stopped at the end. The run is
--run (a flow run id or name), else the latest completed run of --flow (default curate). In
headless Chromium (Playwright) it opens the run's page on its Artifacts tab and every artifact
of the run and of its child runs (a pipeline's curate and train_eval, curate's score-shards),
and saves a full-page PNG of each to docs/img/ui/ (--out), printing what each page rendered.

Needs Playwright (`.venv/bin/pip install -e '.[ui]'`) and a Chromium: Debian's
(`apt-get install chromium`, /usr/bin/chromium, the default), another one with --chromium PATH
or UNDERCURVE_CHROMIUM, or Playwright's own (`.venv/bin/playwright install chromium`).
Exit codes: 0 saved; 1 server unreachable, no such run or a page did not render; 2 no
Playwright or no browser.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

OUT = Path(__file__).resolve().parent / "img" / "ui"
# without the background-networking flags Chromium stalls on a machine with no internet
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
MAX_HEIGHT = 3000  # px: a longer page is cut there
TIMEOUT_MS = 30_000
# JavaScript: the height of the page's content (the dashboard scrolls an inner element, not the page)
CONTENT_HEIGHT = """() => Math.max(document.documentElement.scrollHeight, ...[...document.querySelectorAll('body *')]
    .filter(e => /auto|scroll/.test(getComputedStyle(e).overflowY)).map(e => e.scrollHeight))"""
# JavaScript: what rendered: images loaded / broken, rows of each table
RENDERED = """() => ({images: [...document.images].filter(i => i.naturalWidth > 0).length,
    broken: [...document.images].filter(i => i.complete && i.naturalWidth === 0).length,
    tables: [...document.querySelectorAll('table')].map(t => t.rows.length)})"""


class Failure(Exception):
    """A plain message for the user and the exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def chromium_path() -> str:
    return os.environ.get("UNDERCURVE_CHROMIUM", "/usr/bin/chromium")


def launch(playwright, executable: str | None):
    """Headless Chromium: ``executable``, else Playwright's own browser; Failure(2) without one."""
    try:
        if executable and Path(executable).exists():
            return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        return playwright.chromium.launch(args=CHROMIUM_ARGS)
    except Exception as exc:  # noqa: BLE001 - playwright raises its own Error for a missing browser
        raise Failure(f"no browser: {executable or 'Chromium'} not found or does not start "
                      f"({str(exc).splitlines()[0]}); `apt-get install chromium`, or --chromium PATH, "
                      "or `.venv/bin/playwright install chromium`", 2) from exc


def health(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def temporary_server(prefect_home: str | None = None, timeout: float = 120):
    """``prefect server start`` on a free loopback port (its own session: the whole process
    group is stopped at the end, nothing outlives it); yields its API URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_API_URL=api_url)  # else the UI calls :4200
    if prefect_home:
        env["PREFECT_HOME"] = prefect_home
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not health(api_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-2000:]
                raise Failure(f"the temporary Prefect server did not start ({api_url}):\n{tail}")
            time.sleep(0.5)
        yield api_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group: anything the server started, too
        proc.wait()
        log.close()


def find_runs(api_url: str, run: str | None = None, flow: str = "curate") -> list[dict]:
    """The run (``run``: id or name; None: the latest completed run of ``flow``) and its
    descendants, depth first: ``[{id, name, flow, artifacts: [{id, key, type}]}]``."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas import filters as f
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
    from prefect.exceptions import ObjectNotFound

    if not health(api_url):
        raise Failure(f"Prefect server unreachable at {api_url} (GET {api_url}/health failed)")
    with SyncPrefectClient(api_url) as client:
        if run is None:
            completed = f.FlowRunFilterState(type=f.FlowRunFilterStateType(any_=["COMPLETED"]))
            found = client.read_flow_runs(flow_filter=f.FlowFilter(name=f.FlowFilterName(any_=[flow])),
                                          flow_run_filter=f.FlowRunFilter(state=completed),
                                          sort=FlowRunSort.START_TIME_DESC, limit=1)
            what = f"no completed {flow} run"
        else:
            try:
                found = [client.read_flow_run(uuid.UUID(run))]
            except (ValueError, ObjectNotFound):
                found = client.read_flow_runs(flow_run_filter=f.FlowRunFilter(name=f.FlowRunFilterName(any_=[run])),
                                              sort=FlowRunSort.START_TIME_DESC, limit=1)
            what = f"no flow run with id or name {run!r}"
        if not found:
            raise Failure(f"{what} on {api_url}")
        out, todo = [], list(found)
        while todo:
            r = todo.pop(0)
            arts = client.read_artifacts(flow_run_filter=f.FlowRunFilter(id=f.FlowRunFilterId(any_=[r.id])),
                                         sort=ArtifactSort.KEY_ASC)
            out.append({"id": str(r.id), "name": r.name, "flow": client.read_flow(r.flow_id).name,
                        "artifacts": [{"id": str(a.id), "key": a.key or str(a.id)[:8], "type": a.type} for a in arts]})
            todo[:0] = client.read_flow_runs(  # its child runs next, in order of start
                flow_run_filter=f.FlowRunFilter(parent_flow_run_id=f.FlowRunFilterParentFlowRunId(any_=[r.id])),
                sort=FlowRunSort.START_TIME_ASC)
        return out


def grow(page) -> None:
    """The viewport as tall as the page's content (up to MAX_HEIGHT), for a full-page screenshot:
    the dashboard scrolls an inner element, and draws some parts only once they are in view."""
    height = min(page.evaluate(CONTENT_HEIGHT), MAX_HEIGHT)
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(height, VIEWPORT["height"])})


def open_page(page, url: str, ready: str) -> dict:
    """Load ``url``, wait for the selector ``ready`` and every image, grow the viewport to the
    content. Returns RENDERED."""
    page.set_viewport_size(VIEWPORT)  # measured from here: a page is never shorter than its viewport
    try:
        page.goto(url, wait_until="networkidle", timeout=TIMEOUT_MS)
        page.wait_for_selector(ready, state="visible", timeout=TIMEOUT_MS)
        page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=TIMEOUT_MS)
        grow(page)
        page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    except Exception as exc:  # noqa: BLE001 - playwright's TimeoutError
        raise Failure(f"{url} did not render within {TIMEOUT_MS // 1000} s ({str(exc).splitlines()[0]}); a "
                      "dashboard that cannot reach its API says so on the page: set PREFECT_UI_API_URL "
                      "on the server") from exc
    return page.evaluate(RENDERED)


def open_run_page(page, ui_url: str, run: dict) -> dict:
    """The run's page on its Artifacts tab, once every artifact's key is listed."""
    open_page(page, f"{ui_url}/runs/flow-run/{run['id']}", ".p-tab")
    page.set_viewport_size(VIEWPORT)
    page.locator('.p-tab:text-is("Artifacts")').click()
    page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    grow(page)  # the artifact cards are in a virtual scroller: drawn once in view
    keys = [a["key"] for a in run["artifacts"]]
    try:
        page.wait_for_function("keys => keys.every(k => document.body.innerText.includes(k))", arg=keys,
                               timeout=TIMEOUT_MS)
    except Exception as exc:  # noqa: BLE001
        raise Failure(f"the page of run {run['name']} does not list its artifacts {keys}") from exc
    grow(page)  # drawn, the cards may be taller than their placeholder
    return page.evaluate(RENDERED)


def artifact_url(ui_url: str, artifact_id: str) -> str:
    return f"{ui_url}/artifacts/artifact/{artifact_id}"


ARTIFACT_READY = ".artifact-data-view > *"  # the artifact's markdown, table or progress bar


def shrink(path: Path) -> None:
    """128 colours, no dithering: about a third of the bytes, no visible change on the dashboard's
    flat colours and the figures (Pillow, a dependency of matplotlib; without it, left as it is)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def shoot(browser, api_url: str, runs: list[dict], out: Path, skip_types: tuple[str, ...] = ()) -> list[Path]:
    """A full-page PNG of each run's page and each of its artifacts in ``out``; prints each."""
    ui_url = api_url.rstrip("/").removesuffix("/api")
    out.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    saved: list[Path] = []

    def save(name: str, what: dict, note: str) -> None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        path, n = out / f"{stem}.png", 2
        while path in saved:  # the same key twice
            path, n = out / f"{stem}~{n}.png", n + 1
        page.screenshot(path=str(path), full_page=True)
        shrink(path)
        saved.append(path)
        tables = ", ".join(f"{rows} rows" for rows in what["tables"]) or "none"
        broken = f"; {what['broken']} image(s) NOT loaded" if what["broken"] else ""
        print(f"saved {path}  ({path.stat().st_size // 1024} KB): {note}; images {what['images']}, "
              f"tables: {tables}{broken}", flush=True)

    for run in runs:
        save(f"{run['flow']}-run", open_run_page(page, ui_url, run),
             f"run {run['name']} ({run['flow']}), {len(run['artifacts'])} artifacts listed")
        for a in run["artifacts"]:
            if a["type"] not in skip_types:
                save(f"{run['flow']}-{a['key']}", open_page(page, artifact_url(ui_url, a["id"]), ARTIFACT_READY),
                     f"{a['type']} artifact {a['key']}")
    page.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api-url", default=os.environ.get("PREFECT_API_URL"),
                   help="Prefect API (default: PREFECT_API_URL, else a temporary server on the local database)")
    p.add_argument("--run", help="flow run id or name (default: the latest completed run of --flow)")
    p.add_argument("--flow", default="curate", help="curate, pipeline, train_eval or validate (default curate)")
    p.add_argument("--out", type=Path, default=OUT, help=f"folder for the PNGs (default {OUT})")
    p.add_argument("--chromium", default=chromium_path(),
                   help="browser executable (default: UNDERCURVE_CHROMIUM, else /usr/bin/chromium; "
                        "missing: Playwright's own)")
    p.add_argument("--skip-type", action="append", default=[], choices=["markdown", "table", "progress"],
                   help="leave out artifacts of this type (repeatable)")
    args = p.parse_args(argv)
    try:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:
            raise Failure("Playwright is not installed: .venv/bin/pip install -e '.[ui]'", 2) from exc
        with sync_playwright() as pw, contextlib.ExitStack() as stack:
            browser = launch(pw, args.chromium)  # first: no browser, no server started for nothing
            stack.callback(browser.close)
            api_url = (args.api_url or stack.enter_context(temporary_server())).rstrip("/")
            runs = find_runs(api_url, args.run, args.flow)
            saved = shoot(browser, api_url, runs, args.out, tuple(args.skip_type))
        print(f"{len(saved)} screenshots, {sum(p.stat().st_size for p in saved) // 1024} KB, in {args.out}")
        return 0
    except Failure as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
