"""The load tester's accounting against a stand-in server on 127.0.0.1.

The stand-in (FastAPI + uvicorn, started here) transcribes nothing: it answers a fixed
text, fails files named ``bad*`` with 500 and delays ``slow*`` ones, and counts how many
requests it holds at once. It exercises the client's concurrency, latency, RTFx and error
accounting only; the end-to-end test against ``asrctl serve`` is separate.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrctl.bench.loadtest import LoadOptions, load_clips, run_load_test
from asrctl.errors import OptionsError
from asrctl.inputs import iter_inputs

SLOW_S = 0.3
fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


class Stats:
    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.models: set[str] = set()
        self.peers: set[tuple[str, int]] = set()  # client (host, port): one per connection
        self.forms: list[dict] = []

    def reset(self) -> None:
        self.max_in_flight = 0
        self.peers.clear()
        self.forms.clear()


def make_app(stats: Stats):
    from fastapi.responses import JSONResponse

    # annotations name `fastapi.X`: FastAPI resolves them in this module's globals
    app = fastapi.FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "stub-model", "object": "model"}]}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        request: fastapi.Request, file: fastapi.UploadFile, model: str = fastapi.Form(...)
    ):
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        stats.models.add(model)
        stats.peers.add((request.client.host, request.client.port))
        form = await request.form()
        stats.forms.append({k: v for k, v in form.items() if isinstance(v, str)})
        try:
            await file.read()
            await asyncio.sleep(SLOW_S if file.filename.startswith("slow") else 0.02)
            if file.filename.startswith("bad"):
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            return {"text": "fixed transcript"}
        finally:
            stats.in_flight -= 1

    @app.websocket("/ws")
    async def live(ws: fastapi.WebSocket):
        await ws.accept()
        assert await ws.receive_text() == "START"
        frames = 0
        while True:
            msg = await ws.receive()
            if msg.get("text") == "STOP":
                await ws.send_text(json.dumps({"sentences": [{"text": "hi"}], "is_final": True}))
                break
            if msg.get("bytes"):
                frames += 1
                if frames == 2:
                    await ws.send_text(json.dumps({"partial": "h", "is_final": False}))
        await ws.close()

    return app


@pytest.fixture(scope="module")
def server():
    """``(base_url, stats)`` of the stand-in, served from a thread on a free loopback port."""
    stats = Stats()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(make_app(stats), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the stand-in server did not start"
    yield f"http://127.0.0.1:{port}", stats
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for name, seconds in (("good", 1.0), ("bad", 0.5), ("slow", 0.5)):
        sf.write(root / f"{name}.wav", 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
    return root


def test_closed_loop_counts_errors_latency_and_concurrency(server, clips_dir):
    url, stats = server
    clips = load_clips(iter_inputs(clips_dir), pcm=False)
    assert sorted(c.key for c in clips) == ["bad", "good", "slow"]
    for level in (1, 4):
        stats.reset()
        options = LoadOptions(url=url, concurrency=(level,), requests=12, warmup=0)
        (result,) = run_load_test(options, clips)
        assert stats.max_in_flight == level  # the client really holds `level` requests open
        row = result.to_json()
        assert (row["requests"], row["ok"]) == (12, 8)
        assert row["errors"] == {"500": 4}
        assert "boom" in row["error_examples"]["500"]
        ok = [r for r in result.requests if r.ok]
        assert all(r.text == "fixed transcript" for r in ok)
        slow = [r.latency_s for r in ok if r.key == "slow"]
        assert len(slow) == 4 and min(slow) >= SLOW_S
        assert row["audio_s"] == pytest.approx(4 * 1.0 + 4 * 0.5)  # successful audio only
        # the report rounds wall_s to 0.1 ms, rtfx to 0.01 and req/s to 0.001
        assert row["rtfx"] == pytest.approx(row["audio_s"] / row["wall_s"], rel=1e-3, abs=0.0051)
        assert row["requests_per_s"] == pytest.approx(8 / row["wall_s"], rel=1e-3, abs=0.0051)
        lat = row["latency_s"]
        # the report rounds to 0.1 ms, so the slowest request bounds p99 within that
        assert lat["p50"] <= lat["p95"] <= lat["p99"] <= max(r.latency_s for r in ok) + 5e-5
    assert stats.models == {"stub-model"}  # discovered from GET /v1/models


def test_each_closed_loop_worker_keeps_one_connection_and_cpu_is_reported(server, clips_dir):
    """Workers do not share a pool (httpx's pool costs CPU per request per connection);
    the pre-built multipart body carries the form fields; the client's CPU is reported."""
    url, stats = server
    clips = [c for c in load_clips(iter_inputs(clips_dir), pcm=False) if c.key == "good"]
    stats.reset()
    options = LoadOptions(
        url=url, model="m", concurrency=(4,), requests=24, warmup=0, language="en"
    )
    (result,) = run_load_test(options, clips)
    row = result.to_json()
    assert row["ok"] == 24
    assert len(stats.peers) == 4  # 24 requests over 4 kept-alive connections
    assert stats.forms[0] == {"model": "m", "response_format": "json", "language": "en"}
    assert 0 < row["client_cpu"] < 4


def test_fixed_work_asks_each_request_for_its_share_of_tokens(server, clips_dir):
    """--tokens-per-second: max_tokens = ceil(N x seconds) per clip, and ignore_eos."""
    url, stats = server
    clips = [c for c in load_clips(iter_inputs(clips_dir), pcm=False) if c.key != "bad"]
    stats.reset()
    options = LoadOptions(url=url, concurrency=(1,), requests=2, warmup=0, tokens_per_second=4)
    (result,) = run_load_test(options, clips)
    assert result.to_json()["ok"] == 2
    asked = sorted((f["max_tokens"], f["ignore_eos"]) for f in stats.forms)
    assert asked == [("2", "true"), ("4", "true")]  # 0.5 s and 1.0 s clips
    with pytest.raises(OptionsError, match="tokens-per-second"):
        LoadOptions(url=url, ws=True, tokens_per_second=4)


def test_poisson_arrivals_are_spread_at_the_rate(server, clips_dir):
    url, _ = server
    clips = [c for c in load_clips(iter_inputs(clips_dir), pcm=False) if c.key == "good"]
    options = LoadOptions(url=url, model="m", concurrency=(), rate=(20.0,), requests=20, warmup=1)
    (result,) = run_load_test(options, clips)
    starts = sorted(r.start_s for r in result.requests)
    assert len(starts) == 20 and result.to_json()["ok"] == 20
    # 20 arrivals at 20/s: the last about a second in (seeded), never all at once
    assert 0.3 < starts[-1] < 3.0 and starts[-1] - starts[0] > 0.3
    assert result.label == "rate 20/s"


def test_timeouts_and_refused_connections_are_errors_not_crashes(server, clips_dir):
    url, _ = server
    slow = [c for c in load_clips(iter_inputs(clips_dir), pcm=False) if c.key == "slow"]
    options = LoadOptions(url=url, model="m", concurrency=(2,), requests=2, warmup=0, timeout_s=0.1)
    (result,) = run_load_test(options, slow)
    assert result.to_json()["errors"] == {"timeout": 2}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    options = LoadOptions(url=f"http://127.0.0.1:{closed}", model="m", concurrency=(1,), requests=2)
    (result,) = run_load_test(options, slow[:1] * 1)
    assert result.to_json()["errors"] == {"ConnectError": 2}


def test_websocket_sessions_report_first_partial_and_final(server, clips_dir):
    url, _ = server
    clips = [c for c in load_clips(iter_inputs(clips_dir), pcm=True) if c.key == "bad"]  # 0.5 s
    options = LoadOptions(url=url, concurrency=(2,), requests=2, warmup=0, ws=True)
    (result,) = run_load_test(options, clips)
    row = result.to_json()
    assert (row["ok"], row["errors"]) == (2, {})
    for r in result.requests:
        assert r.text == "hi"
        assert r.latency_s >= 0.5 - 0.05  # frames were paced in real time
        assert 0 < r.first_partial_s < 0.5  # after the 2nd 100 ms frame
        assert 0 <= r.final_after_stop_s < 0.5
    assert row["first_partial_s"]["p50"] is not None


def test_cli_writes_report_and_chart(server, clips_dir, tmp_path):
    url, _ = server
    out = tmp_path / "out"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "asrctl", "bench", str(clips_dir), "--server", url),
            *("--concurrency", "1,2", "--requests", "6", "--warmup", "1", "-o", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out / "bench.json")
    report = json.loads((out / "bench.json").read_text())
    assert report["kind"] == "server" and report["server"] == url
    assert [lvl["concurrency"] for lvl in report["levels"]] == [1, 2]
    assert all(lvl["requests"] == 6 and lvl["errors"] == {"500": 2} for lvl in report["levels"])
    assert {"hardware", "versions", "command", "latency_scope", "requests"} <= report.keys()
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "req/s" in run.stderr and "p95" in run.stderr
