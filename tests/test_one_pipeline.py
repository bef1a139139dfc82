"""Batch, server and library give identical results for the same inputs: they run one
request life cycle (asrctl.pipeline). On the fake engine, whose tokens are a function of the
prompt embeddings, so equal tokens mean equal prompts, encoder output and clean-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import ENGINE_FLAGS
from liveserver import in_process_server

from asrctl.engine import EngineOptions
from asrctl.server.options import ServerOptions


@pytest.fixture
def wavs(make_wav) -> list[Path]:
    return [make_wav(f"u{i}.wav", seconds, seed=i) for i, seconds in enumerate((0.6, 2.3, 4.1))]


def test_batch_server_and_library_agree(
    fun_asr_tiny: Path, wavs: list[Path], tmp_path: Path, fake_engine, asrctl_cli, asr_tiny
) -> None:
    out = tmp_path / "out"
    run = asrctl_cli("transcribe", *wavs, "-m", fun_asr_tiny, "-o", out, "--max-tokens", "8",
                     *ENGINE_FLAGS)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = {r["key"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    batch = {k: (r["text"], r["num_tokens"]) for k, r in rows.items()}

    library = {
        w.stem: (r.text, len(r.token_ids))
        for w, r in zip(wavs, asr_tiny.transcribe(wavs, max_tokens=8), strict=True)
    }

    options = ServerOptions(max_tokens=8)
    engine = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
    server = {}
    with in_process_server(fun_asr_tiny, options, engine) as client:
        for w in wavs:
            files = {"file": (w.name, w.read_bytes(), "audio/wav")}
            body = client.post(
                "/v1/audio/transcriptions", files=files, data={"response_format": "verbose_json"}
            ).json()
            server[w.stem] = (body["text"], len(body["segments"][0]["tokens"]))

    assert batch == library == server
    assert len({text for text, _ in batch.values()}) == len(wavs)  # the audio matters
