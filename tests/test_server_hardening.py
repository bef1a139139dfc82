"""Issue 18's server reproductions, each a clean error now (fake model, no vLLM)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from media import encoded, pyav_encode, tone
from prometheus_client import REGISTRY, Gauge
from test_server import AUTH, KEY, SR, FakeModel, post

from asrctl.server.app import RedactSecrets, _log_config, create_app
from asrctl.server.metrics import Metrics
from asrctl.server.options import ServerOptions
from asrctl.server.state import LONG_AUDIO_SECONDS, ServerState


def client_for(**options) -> TestClient:
    model = FakeModel()
    opts = ServerOptions(served_model_names=("tiny",), api_keys=(KEY,), **options)
    state = ServerState.create(model, opts, Path("/models/x"), Metrics())
    client = TestClient(create_app(state))
    client.model = model
    return client


@pytest.fixture
def client():
    with client_for() as c:
        yield c


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_concat_script_upload_reads_no_file(client, tmp_path, monkeypatch) -> None:
    """#1: an ffconcat script with a non-UTF-8 byte made FFmpeg open the file it named."""
    monkeypatch.chdir(tmp_path)
    sf.write(tmp_path / "secret.wav", tone(1.0), SR)
    script = b"ffconcat version 1.0\n#\xff\nfile 'secret.wav'\n"
    body = error_of(post(client, script), 400)
    assert body["code"] == "invalid_audio" and "not an accepted audio file" in body["message"]
    assert client.model.calls == []


def test_sdp_upload_is_refused_at_once(client) -> None:
    """#2: a 150-byte SDP upload stalled decoding and opened UDP ports."""
    sdp = (
        b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=\xff\nc=IN IP4 127.0.0.1\nt=0 0\n"
        b"m=audio 5004 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
    )  # before the fix: FFmpeg bound UDP ports and waited ~10 s for packets
    start = time.perf_counter()
    assert error_of(post(client, sdp), 400)["code"] == "invalid_audio"
    assert time.perf_counter() - start < 1.0


def test_memory_bomb_is_a_413_after_the_cap_only(client) -> None:
    """#3: a webm without a duration was decoded whole (hours) before its length check."""
    bomb = pyav_encode("webm", "libopus", np.zeros(600 * 48000, np.float32), 48000,
                       options={"live": "1"})  # fmt: skip
    start = time.perf_counter()
    body = error_of(post(client, bomb), 413)
    assert time.perf_counter() - start < 5.0
    assert body["code"] == "audio_too_long"
    assert "longer than 3" in body["message"] and "at most 30 s" in body["message"]


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3", "m4a", "webm"])
def test_every_accepted_format_transcribes(client, fmt) -> None:
    response = post(client, encoded(fmt, 1.0))
    assert response.status_code == 200, response.text
    assert response.json()["text"].startswith("heard 1")


def test_vad_server_caps_audio_by_default() -> None:
    with client_for(vad=True) as c:
        assert c.app.state.asr.limits.max_seconds == LONG_AUDIO_SECONDS
    with client_for(vad=True, max_audio_seconds=90) as c:
        assert c.app.state.asr.limits.max_seconds == 90


def test_asr_hotwords_are_capped(client) -> None:
    """#4: /asr took a 38 k-character hotword list (16 s a request)."""
    many = ",".join(f"word{i}" for i in range(5000))
    body = error_of(post(client, path="/asr", hotwords=many), 400)
    assert body["param"] == "hotwords" and "2000 characters" in body["message"]
    assert client.model.calls == []
    assert post(client, path="/asr", hotwords="alpha,beta").status_code == 200


@pytest.mark.parametrize("seed", ["²", "١٢", "1_000", "-1", "1.5"])
def test_non_ascii_digit_seed_is_a_400(client, seed) -> None:
    """#8: `-F seed=²` was a 500 and a dropped connection."""
    body = error_of(post(client, temperature="0.5", seed=seed), 400)
    assert body["param"] == "seed"


def test_openapi_needs_the_key_and_docs_are_off(client) -> None:
    """#13: /openapi.json was open without a key."""
    assert error_of(client.get("/openapi.json"), 401)["code"] == "invalid_api_key"
    assert client.get("/openapi.json", headers=AUTH).status_code == 200
    for path in ("/docs", "/redoc"):
        assert client.get(path, headers=AUTH).status_code == 404


def test_metrics_show_no_paths_or_python_version(client) -> None:
    """#13: /metrics (open without a key) showed the absolute model path and Python's version."""
    info = Gauge("vllm_test_info", "a vLLM-style info metric", ["model_name", "cache_dir"])
    info.labels("/home/me/models/x/.asrctl/llm", "/home/me/cache").set(1)
    try:
        text = client.get("/metrics").text
    finally:
        REGISTRY.unregister(info)
    assert "python_info" not in text and "/home/me" not in text
    assert 'vllm_test_info{cache_dir="-",model_name="tiny"} 1.0' in text
    assert "asrctl_requests_total" in text and "process_" in text


def test_api_key_in_a_websocket_query_is_not_logged() -> None:
    """#13: /ws?api_key= was written in plain text to the access log."""
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, "x", 1, '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5000", "/ws?api_key=sk-secret&lang=zh"), None,
    )  # fmt: skip
    RedactSecrets().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "WebSocket /ws?api_key=***&lang=zh" [accepted]'
    config = _log_config()
    assert all("secrets" in h["filters"] for h in config["handlers"].values())
    assert config["filters"]["secrets"]["()"] is RedactSecrets
