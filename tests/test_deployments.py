"""prefect.yaml deploys against a real Prefect server, and the nightly deployment gets
scheduled runs at 02:00 UTC."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(os.sys.executable).with_name("prefect"))


def test_every_deployment_points_at_a_flow():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        assert f"def {func}(" in (REPO / path).read_text(), d["entrypoint"]
        config = d["parameters"]["config"]
        assert (REPO / config).exists(), config


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on loopback (the test harness runs no scheduler)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).read() == b"true":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("prefect server did not start")
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


CPU_DEPLOYMENTS = ["curate-demo", "pipeline-demo", "validate-demo", "curate-nightly"]
SCHEDULED = """
import asyncio, json, sys
from prefect.client.orchestration import get_client

async def main(wait_s):
    async with get_client() as client:
        dep = await client.read_deployment_by_name("curate/curate-nightly")
        runs = []
        for _ in range(wait_s):  # the scheduler service creates runs on its own loop
            runs = [r for r in await client.read_flow_runs()
                    if r.deployment_id == dep.id and r.state and r.state.is_scheduled()]
            if runs:
                break
            await asyncio.sleep(1)
        names = [d.name for d in await client.read_deployments()]
        print(json.dumps({"cron": dep.schedules[0].schedule.cron, "active": dep.schedules[0].active,
                          "deployments": sorted(names), "starts": [r.expected_start_time.isoformat() for r in runs]}))

asyncio.run(main(int(sys.argv[1])))
"""


def _scheduled(env, wait_s: int) -> dict:
    res = subprocess.run([os.sys.executable, "-c", SCHEDULED, str(wait_s)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_readme_deploy_steps_on_a_cpu_machine_and_a_paused_nightly(prefect_server):
    """The README's steps, as written, on a machine with only the CPU pool."""
    env = prefect_server
    subprocess.run([PREFECT, "work-pool", "create", "undercurve-cpu", "--type", "process"], cwd=REPO, env=env,
                   check=True, capture_output=True)
    cmd = [PREFECT, "--no-prompt", "deploy"] + [a for n in CPU_DEPLOYMENTS for a in ("--name", n)]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    readme = (REPO / "README.md").read_text()
    assert all(f"--name {n}" in readme for n in CPU_DEPLOYMENTS)  # what this test ran is what the README says
    info = _scheduled(env, wait_s=8)
    assert info["cron"] == "0 2 * * *" and info["active"] is False and info["starts"] == []  # paused
    assert info["deployments"] == sorted(CPU_DEPLOYMENTS)

    resume = [PREFECT, "--no-prompt", "deployment", "schedule", "resume", "--all"]  # the nightly: the only schedule
    assert " ".join(resume[1:]) in readme
    out = subprocess.run(resume, cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    info = _scheduled(env, wait_s=90)
    assert info["active"] is True and info["starts"], "the scheduler created no runs for the resumed nightly"
    for start in info["starts"]:
        t = datetime.fromisoformat(start).astimezone(timezone.utc)
        assert (t.hour, t.minute) == (2, 0)
