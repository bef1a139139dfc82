"""Shared fixtures: the tiny Fun-ASR-Nano checkpoint and seeded test audio."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrctl.fixtures import make_fixture


@pytest.fixture(scope="session")
def fun_asr_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Fun-ASR-Nano model directory (seed 0), generated once per session; do not mutate."""
    return make_fixture(
        "fun-asr-nano", tmp_path_factory.mktemp("fun-asr-nano"), size="tiny", seed=0
    )


@pytest.fixture(scope="session")
def vibevoice_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both VibeVoice-ASR layouts (original and transformers-native), generated once per
    session; do not mutate."""
    root = tmp_path_factory.mktemp("vibevoice")
    return {
        "original": make_fixture("vibevoice-asr", root / "VibeVoice-ASR"),
        "hf": make_fixture("vibevoice-asr-hf", root / "VibeVoice-ASR-HF"),
    }


@pytest.fixture
def fun_asr_copy(tmp_path: Path, fun_asr_tiny: Path) -> Path:
    """A fresh copy of the tiny fixture (without any export cache) for tests that mutate it."""
    return Path(
        shutil.copytree(
            fun_asr_tiny, tmp_path / "Fun-ASR-Nano", ignore=shutil.ignore_patterns(".asrctl")
        )
    )


@pytest.fixture
def make_wav(tmp_path: Path) -> Callable[..., Path]:
    """``make_wav(name, seconds, sr=16000, seed=0)`` writes seeded noise * 0.1 as 16-bit wav."""

    def make(name: str, seconds: float, sr: int = 16000, seed: int = 0) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        noise = 0.1 * np.random.default_rng(seed).standard_normal(round(seconds * sr))
        sf.write(path, noise.astype(np.float32), sr, subtype="PCM_16", format="WAV")
        return path

    return make


# engine settings that keep the tiny fixture fast on a CPU
TINY_ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "max_tokens": 8}


@pytest.fixture(scope="session")
def asr_tiny(fun_asr_tiny: Path):
    """``asrctl.load`` of the tiny fixture (real vLLM), shared by test_api and test_examples
    so the session starts one engine for both; do not close it."""
    import asrctl

    with asrctl.load(fun_asr_tiny, **TINY_ENGINE) as asr:
        yield asr


@pytest.fixture
def fake_server():
    """The real server app over test_server's stand-in model (no engine), served by uvicorn
    in a thread on a free loopback port; yields the ``http://127.0.0.1:PORT/v1`` base URL.
    The API key is ``sk-x``."""
    import socket
    import threading
    import time

    import uvicorn
    from test_server import FakeModel

    from asrctl.server.app import create_app
    from asrctl.server.metrics import Metrics
    from asrctl.server.options import ServerOptions
    from asrctl.server.state import ServerState

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = ServerOptions(served_model_names=("tiny",), api_keys=("sk-x",), port=port)
    state = ServerState.create(FakeModel(), options, Path("/m"), Metrics())
    server = uvicorn.Server(uvicorn.Config(create_app(state), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)
