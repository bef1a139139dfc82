"""``serve`` with word timestamps: Fun-ASR-Nano's CTC head (the ``--ctc`` fixture) through
``timestamp_granularities[]=word``, in one pass and across ``--vad`` segments. One server,
on asrctl.testing's fake engine (the CTC head times whatever text the engine wrote).
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from liveserver import live_server
from speechlike import SR, recording

from asrctl.engine import FAKE_ENGINE_ENV
from asrctl.fixtures import fun_asr_nano

ENV = os.environ | {FAKE_ENGINE_ENV: "1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-words")
    model = fun_asr_nano.make(root / "Fun-ASR-Nano", ctc=True)
    args = ["--model", str(model), "--vad", "--max-tokens", "8", "--max-model-len", "1024"]
    with live_server(args, root / "server.log", env=ENV) as srv:
        yield srv.url


def _wav(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _post(url: str, audio: np.ndarray, **fields) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("a.wav", _wav(audio), "audio/wav")},
        data={"response_format": "verbose_json", **fields},
        timeout=300,
    )


def _check_words(body: dict) -> list[dict]:
    words = body["words"]
    assert "".join(w["word"] for w in words) == "".join(body["text"].split())
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    assert all(0 <= w["start"] < w["end"] <= body["duration"] + 0.06 for w in words)
    return words


def test_words_on_request_only(server: str) -> None:
    audio = (0.1 * np.random.default_rng(0).standard_normal(SR * 6)).astype(np.float32)
    plain = _post(server, audio)
    assert plain.status_code == 200, plain.text
    assert "words" not in plain.json()
    timed = _post(server, audio, **{"timestamp_granularities[]": "word"})
    assert timed.status_code == 200, timed.text
    body = timed.json()
    assert body["text"] == plain.json()["text"]
    assert _check_words(body)
    assert "CTC forced alignment" in body["notes"][0]


def test_vad_segments_words_on_the_upload_clock(server: str) -> None:
    layout = [("speech", 12.0), ("silence", 2.0), ("speech", 12.0), ("silence", 2.0)]
    layout += [("speech", 10.0)]
    audio, truth = recording(layout, seed=5)
    r = _post(server, audio, **{"timestamp_granularities[]": "word"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["segments"]) >= 2
    words = _check_words(body)
    last = body["segments"][-1]
    assert any(w["start"] >= last["start"] for w in words)  # shifted past earlier segments
    assert truth[-1][0] - 0.5 <= last["start"]


def test_funasr_endpoint_words_per_segment(server: str) -> None:
    audio = (0.1 * np.random.default_rng(1).standard_normal(SR * 5)).astype(np.float32)
    r = httpx.post(
        f"{server}/asr",
        files={"file": ("a.wav", _wav(audio), "audio/wav")},
        data={"timestamp": "true"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    (segment,) = body["segments"]
    assert "".join(w["word"] for w in segment["words"]) == "".join(body["text"].split())
    assert segment["words"] and set(segment["words"][0]) == {"word", "start", "end"}
