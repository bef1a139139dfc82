"""``asrctl bench --server`` against a live ``asrctl serve`` on the tiny fixture, its
engine asrctl.testing's fake (the load tester only sees HTTP and WebSocket).

The load tester runs as users run it (subprocesses), over HTTP (closed loop and Poisson)
and over ``/ws`` with audio paced in real time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from liveserver import live_server

from asrctl.engine import FAKE_ENGINE_ENV


@pytest.fixture(scope="module")
def server(fun_asr_tiny, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--model", str(fun_asr_tiny), "--max-tokens", "8", "--max-model-len", "1024"]
    with live_server(args, log, env=os.environ | {FAKE_ENGINE_ENV: "1"}) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(2)
    for i, seconds in enumerate((0.6, 1.0, 1.4)):
        sf.write(root / f"c{i}.wav", 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
    return root


def bench(url: str, clips: Path, out: Path, *args: str) -> dict:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "asrctl",
            "bench",
            str(clips),
            "--server",
            url,
            "-o",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out / "bench.json")
    return json.loads((out / "bench.json").read_text())


def test_http_sweep_and_poisson_against_asrctl_serve(server, clips, tmp_path):
    report = bench(
        server, clips, tmp_path, "--concurrency", "1,4", "--rate", "4", "--requests", "8"
    )
    levels = {(lvl["mode"], lvl["concurrency"] or lvl["rate"]): lvl for lvl in report["levels"]}
    assert set(levels) == {("closed", 1), ("closed", 4), ("poisson", 4.0)}
    for lvl in levels.values():
        assert (lvl["requests"], lvl["ok"], lvl["errors"]) == (8, 8, {})
        assert lvl["rtfx"] > 0 and lvl["requests_per_s"] > 0
        assert 0 < lvl["latency_s"]["p50"] <= lvl["latency_s"]["p99"]
    assert report["settings"]["model"] is None  # discovered from GET /v1/models
    assert (tmp_path / "bench.png").is_file()


def test_websocket_partials_and_final_against_asrctl_serve(server, clips, tmp_path):
    report = bench(server, clips, tmp_path, "--ws", "--concurrency", "2", "--requests", "2")
    (level,) = report["levels"]
    assert (level["mode"], level["ok"], level["errors"]) == ("ws", 2, {})
    final = level["final_after_stop_s"]
    assert final["p50"] is not None and final["p99"] < 30
    # sessions last as long as their audio: frames are paced in real time
    assert min(r["latency_s"] for r in report["requests"]["ws c=2"]) >= 0.55
