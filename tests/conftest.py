"""Shared fixtures: the tiny Fun-ASR-Nano checkpoint, seeded test audio, the fake engine
(asrctl.testing, no vLLM) and the transformers reference that vLLM runs are checked against."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrctl.engine import FAKE_ENGINE_ENV
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


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """asrctl's engine is asrctl.testing's deterministic fake, not vLLM, in this test and in
    the ``python -m asrctl`` subprocesses it starts ($ASRCTL_FAKE_ENGINE)."""
    monkeypatch.setenv(FAKE_ENGINE_ENV, "1")


@pytest.fixture
def asrctl_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``asrctl_cli(*args)``: the command line run in this process as the console script
    runs it (``asrctl.cli.app.main``: exit codes, stdout, stderr), without the caller's
    ASRCTL_CACHE / ASRCTL_DEBUG; seconds faster than a ``python -m asrctl`` subprocess.
    Anything main() lets escape (a traceback a user would see) is raised."""
    from asrctl.cli.app import main

    for name in ("ASRCTL_CACHE", "ASRCTL_DEBUG", "VLLM_LOGGING_STREAM", "VLLM_LOGGING_LEVEL"):
        monkeypatch.delenv(name, raising=False)  # main() may set some: restored after

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in args]
        monkeypatch.setattr(sys, "argv", ["asrctl", *argv])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def fun_asr_llm_dir(fun_asr_tiny: Path) -> Path:
    """The tiny fixture's exported LLM folder (what vLLM, or the fake engine, loads)."""
    from asrctl.adapters.registry import load_adapter
    from asrctl.export import export_llm

    return export_llm(load_adapter(fun_asr_tiny)).llm_dir


@pytest.fixture(scope="session")
def reference_texts() -> Callable[..., list[str]]:
    """``reference_texts(model_dir, paths, max_tokens)``: greedy transcripts of audio files
    from transformers over asrctl's prompt embeddings (no vLLM), cleaned as asrctl cleans
    them: what a vLLM run must print token for token."""

    def texts(model_dir: Path, paths: Sequence[Path], max_tokens: int) -> list[str]:
        import torch
        from transformers import AutoModelForCausalLM

        from asrctl.adapters.base import PromptOptions
        from asrctl.adapters.registry import load_adapter
        from asrctl.audio import load_audio
        from asrctl.engine import TextEmbedder
        from asrctl.export import prepare
        from asrctl.guard import truncate_loops

        llm_dir = prepare(model_dir).llm_dir
        adapter = load_adapter(model_dir)
        encoder = adapter.audio_encoder("cpu", torch.float32)
        embed = TextEmbedder(llm_dir, torch.float32)
        prompt = adapter.prompt(PromptOptions())
        llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()
        out = []
        with torch.inference_mode():
            for path in paths:
                audio = torch.from_numpy(load_audio(path, sample_rate=adapter.family.sample_rate))
                emb = torch.cat([embed(prompt.prefix), encoder([audio])[0], embed(prompt.suffix)])
                ids = llm.generate(
                    inputs_embeds=emb[None],
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    attention_mask=torch.ones(1, len(emb)).long(),
                )
                decoded = embed.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
                # vLLM's incremental detokenizer withholds a trailing, incomplete UTF-8
                # sequence (cut by max_tokens); a one-shot decode shows it as U+FFFD. Every
                # transcript then goes through the repetition guard (asrctl.guard).
                text = adapter.postprocess(decoded.rstrip("\ufffd"))
                out.append(truncate_loops(text)[0])
        return out

    return texts


# engine settings that keep the tiny fixture fast on a CPU
TINY_ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "max_tokens": 8}


@pytest.fixture(scope="session")
def asr_tiny(fun_asr_tiny: Path):
    """``asrctl.load`` of the tiny fixture on the fake engine (asrctl.testing: the library's
    behaviour, not the model's, is under test), shared by test_api and test_examples; do not
    close it. The README's Library block runs on real vLLM (test_examples)."""
    import os

    import asrctl

    os.environ[FAKE_ENGINE_ENV] = "1"
    try:
        asr = asrctl.load(fun_asr_tiny, **TINY_ENGINE)
    finally:
        os.environ.pop(FAKE_ENGINE_ENV, None)
    with asr:
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
