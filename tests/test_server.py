"""The server's HTTP and WebSocket behaviour against a fake model (no vLLM; fast).

``FakeModel`` stands in for :class:`asrctl.server.engine.AsyncModel`: it uses the real
Fun-ASR-Nano adapter for prompt validation and family facts, and "transcribes" audio as
``heard N samples``. Live-engine tests are in ``test_serve_vllm.py``.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import conversation
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from asrctl.adapters.fun_asr_nano import FunAsrNanoAdapter
from asrctl.errors import OptionsError
from asrctl.results import Segment, Transcript
from asrctl.server import formats
from asrctl.server.app import create_app
from asrctl.server.batching import BatcherClosed, EncoderBatcher
from asrctl.server.endpointing import EnergyEndpointer
from asrctl.server.engine import Progress
from asrctl.server.metrics import Metrics
from asrctl.server.options import RealtimeOptions, ServerOptions
from asrctl.server.state import ServerState
from asrctl.server.uploads import looks_like_text

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
SR = 16000


class FakeModel:
    """Transcribes any audio as ``heard N samples``, growing five characters a step."""

    def __init__(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="fake-model-"))  # the adapter reads its prompt
        (folder / "config.yaml").write_text("model: FunASRNano\n")  # settings from here
        self.adapter = FunAsrNanoAdapter(folder)
        self.sample_rate = SR
        self.batcher = SimpleNamespace(depth=0)
        self.calls: list[tuple[int, object, object]] = []
        self.word_timing = False
        self.llm_dir = Path("/models/x/.asrctl/llm")
        self.max_model_len = 1024

    def check_prompt(self, options) -> None:
        self.adapter.prompt(options)

    async def stream(self, audio, prompt, decode, request_id=None, *, streaming=True):
        self.calls.append((len(audio), prompt, decode))
        if prompt.hotwords == ("boom",):
            raise OptionsError("prompt too long for max_model_len")
        text = f"heard {len(audio)} samples"
        for end in range(5, len(text), 5):
            await asyncio.sleep(0)
            yield Progress(text[:end])
        avg = -0.5 if decode.logprobs else None
        duration = round(len(audio) / SR, 3)
        result = Transcript(
            "", text, duration, (1, 2, 3), "stop", prompt_tokens=30, audio_tokens=4, avg_logprob=avg
        )
        yield Progress(text, result)

    async def check_health(self) -> None:
        pass

    async def close(self) -> None:
        pass


def wav_bytes(seconds: float, sr: int = SR, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    noise = 0.1 * np.random.default_rng(seed).standard_normal(round(seconds * sr))
    sf.write(buf, noise.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def app_client():
    model = FakeModel()
    options = ServerOptions(served_model_names=("tiny",), api_keys=(KEY,), max_upload_mb=1)
    state = ServerState.create(model, options, Path("/models/x"), Metrics())
    with TestClient(create_app(state)) as client:
        client.model = model
        yield client


def post(client, data: bytes | None = None, headers=AUTH, path="/v1/audio/transcriptions", **f):
    files = {"file": ("a.wav", data if data is not None else wav_bytes(1.0), "audio/wav")}
    return client.post(path, files=files, data=f, headers=headers)


def test_formats_from_one_result(app_client):
    assert post(app_client).json() == {
        "text": "heard 16000 samples",
        "usage": {"type": "duration", "seconds": 1.0},
    }
    text = post(app_client, response_format="text")
    assert text.text == "heard 16000 samples\n" and text.headers["content-type"].startswith(
        "text/plain"
    )
    verbose = post(
        app_client, response_format="verbose_json", **{"timestamp_granularities[]": "segment"}
    )
    body = verbose.json()
    assert body["segments"][0] | {"tokens": None} == {
        "id": 0, "seek": 0, "start": 0.0, "end": 1.0, "text": "heard 16000 samples",
        "tokens": None, "temperature": 0.0, "avg_logprob": -0.5,
        "compression_ratio": formats.compression_ratio("heard 16000 samples"),
        "no_speech_prob": None,
    }  # fmt: skip
    assert "words" not in body and "no timestamps" in body["notes"][0]
    srt = post(app_client, response_format="srt").text
    assert srt == "1\n00:00:00,000 --> 00:00:01,000\nheard 16000 samples\n"
    vtt = post(app_client, response_format="vtt").text
    assert vtt == "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nheard 16000 samples\n"


def test_fields_reach_the_model(app_client):
    post(app_client, language="zh", prompt="阿里巴巴，通义\n千问", temperature="0.7", seed="3")
    _, prompt, decode = app_client.model.calls[-1]
    assert prompt.language == "zh" and prompt.hotwords == ("阿里巴巴", "通义", "千问")
    assert decode.temperature == 0.7 and decode.seed == 3
    post(app_client, **{"keywords[]": "a"}, hotwords="b,c")
    assert app_client.model.calls[-1][1].hotwords == ("b", "c", "a")


def test_every_sampling_field_is_honoured(app_client):
    """No sampling field is silently dropped (OpenAI SDK and vLLM clients send them)."""
    fields = {
        "max_completion_tokens": "4", "top_p": "0.5", "top_k": "7", "repetition_penalty": "1.2",
        "frequency_penalty": "0.3", "presence_penalty": "-0.4",
    }  # fmt: skip
    assert post(app_client, **fields).status_code == 200
    decode = app_client.model.calls[-1][2]
    assert (decode.max_tokens, decode.top_p, decode.top_k) == (4, 0.5, 7)
    assert (decode.repetition_penalty, decode.frequency_penalty, decode.presence_penalty) == (
        1.2, 0.3, -0.4
    )  # fmt: skip
    post(app_client, max_tokens="9")
    assert app_client.model.calls[-1][2].max_tokens == 9
    assert not app_client.model.calls[-1][2].ignore_eos
    post(app_client, max_tokens="9", ignore_eos="true")  # vLLM's extension (benchmarks)
    assert app_client.model.calls[-1][2].ignore_eos


def test_stream_sends_deltas_then_done(app_client):
    response = post(app_client, stream="true")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line]
    assert [e["type"] for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == "heard 16000 samples"
    assert events[-1]["usage"]["input_token_details"] == {"audio_tokens": 4, "text_tokens": 26}


def test_stream_in_vllm_format_for_vllm_clients(app_client):
    """``vllm bench serve --backend openai-audio`` sends vLLM's stream fields and parses
    ``choices[0].delta.content`` chunks, usage and [DONE]."""
    fields = {"stream_include_usage": "True", "stream_continuous_usage_stats": "True"}
    response = post(app_client, stream="true", language="en", max_completion_tokens="32", **fields)
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "heard 16000 samples"
    assert chunks[-1]["usage"] == {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}
    cards = app_client.get("/v1/models", headers=AUTH).json()["data"]
    assert cards[0]["id"] == "tiny" and cards[0]["root"].endswith(".asrctl/llm")


def test_stream_failure_is_an_error_event(app_client):
    response = post(app_client, stream="true", prompt="boom")
    assert response.status_code == 200
    assert response.text.startswith("event: error\ndata: ")
    assert "max_model_len" in json.loads(response.text.split("data: ", 1)[1])["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "headers", "status", "param"),
    [
        ({}, {}, 401, None),
        ({}, {"Authorization": "Bearer wrong"}, 401, None),
        ({"model": "whisper-1"}, AUTH, 404, "model"),
        ({"known_speaker_names[]": "ann"}, AUTH, 400, "known_speaker_names[]"),
        ({"diarize": "maybe"}, AUTH, 400, "diarize"),
        ({"timestamp_granularities[]": "word"}, AUTH, 400, "timestamp_granularities[]"),
        ({"language": "xx"}, AUTH, 400, "language"),
        ({"temperature": "3"}, AUTH, 400, "temperature"),
        ({"top_p": "2"}, AUTH, 400, "top_p"),
        ({"max_completion_tokens": "0"}, AUTH, 400, "max_tokens"),
        ({"max_tokens": "many"}, AUTH, 400, "max_tokens"),
        ({"repetition_penalty": "nan"}, AUTH, 400, "repetition_penalty"),
        ({"seed": "²"}, AUTH, 400, "seed"),
        ({"stream": "maybe"}, AUTH, 400, "stream"),
        ({"ignore_eos": "perhaps"}, AUTH, 400, "ignore_eos"),
        ({"stream": "true", "response_format": "srt"}, AUTH, 400, "stream"),
        ({"include[]": "logprobs"}, AUTH, 400, "include[]"),
    ],
)
def test_bad_fields(app_client, fields, headers, status, param):
    response = post(app_client, headers=headers, **fields)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_bad_audio_and_limits(app_client):
    def error(response, status):
        assert response.status_code == status, response.text
        return response.json()["error"]["message"]

    assert "empty" in error(post(app_client, b""), 400)
    assert "text, not an audio file" in error(
        post(app_client, b"#EXTM3U\nfile:///etc/passwd\n"), 400
    )
    assert "could not decode" in error(post(app_client, b"RIFF\x00\x01garbage" * 9), 400)
    assert "31.0 s" in error(post(app_client, wav_bytes(31, sr=8000)), 413)
    assert "30 s" in error(post(app_client, wav_bytes(31, sr=8000)), 413)
    # 1 MiB cap: a file over it (and under the form overhead) is read, then refused
    assert "limit is 1 MiB" in error(post(app_client, wav_bytes(40, sr=16000)[:1_500_000]), 413)
    # a body over cap + overhead is refused from Content-Length, or while streaming in
    big = b"\x00" * (3 << 20)
    assert "1 MiB" in error(post(app_client, big), 413)

    def chunks():
        for _ in range(6):
            yield b"\x00" * (512 << 10)

    chunked = app_client.post(
        "/v1/audio/transcriptions",
        content=chunks(),
        headers=AUTH | {"content-type": "multipart/form-data; boundary=x"},
    )
    assert "1 MiB" in error(chunked, 413)
    assert "multipart" in error(
        app_client.post("/v1/audio/transcriptions", json={}, headers=AUTH), 400
    )
    assert post(app_client).status_code == 200  # still serving


def test_funasr_asr(app_client):
    body = post(app_client, path="/asr", hotwords="a, b", language="zh", timestamp="true").json()
    assert body["text"] == "heard 16000 samples" and body["duration"] == 1.0
    assert body["segments"] == [{"text": "heard 16000 samples", "start": 0.0, "end": 1.0}]
    assert body["processing_time"] >= 0 and "rtf" in body and body["notes"]
    assert app_client.model.calls[-1][1].hotwords == ("a", "b")
    bad = post(app_client, path="/asr", spk="true", min_speakers="3", max_speakers="2")
    assert bad.status_code == 400 and "min-speakers" in bad.json()["error"]["message"]
    assert post(app_client, path="/asr", language="中文").status_code == 200  # a name
    assert app_client.model.calls[-1][1].language == "zh"
    assert post(app_client, path="/asr", language="English").status_code == 200
    assert app_client.model.calls[-1][1].language == "en"


@pytest.mark.skipif(not conversation.espeak_available(), reason="espeak-ng is not installed")
def test_speakers_on_asr_and_openai(app_client):
    """spk=true / diarized_json: one request per speaker turn, each segment labelled."""
    audio, turns = conversation.conversation([0, 1, 0], 0.7, seed=2)
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    body = post(app_client, data, path="/asr", spk="true").json()
    assert [s["speaker"] for s in body["segments"]] == ["SPEAKER_0", "SPEAKER_1", "SPEAKER_0"]
    for seg, turn in zip(body["segments"], turns, strict=True):
        assert abs(seg["start"] - turn.start) < 0.5 and abs(seg["end"] - turn.end) < 0.5
        samples = int(seg["text"].split()[1])  # each turn was transcribed on its own
        assert abs(samples - (seg["end"] - seg["start"]) * SR) <= 1
    diarized = post(app_client, data, response_format="diarized_json").json()
    assert diarized["task"] == "transcribe" and diarized["text"] == body["text"]
    assert [(s["type"], s["id"], s["speaker"]) for s in diarized["segments"]] == [
        ("transcript.text.segment", f"seg_{i}", f"SPEAKER_{k}") for i, k in enumerate((0, 1, 0))
    ]
    vtt = post(app_client, data, response_format="vtt", diarize="true").text
    assert vtt.count("<v SPEAKER_0>") == 2 and vtt.count("<v SPEAKER_1>") == 1
    one = post(app_client, data, response_format="diarized_json", num_speakers="1").json()
    assert {s["speaker"] for s in one["segments"]} == {"SPEAKER_0"}


def test_models_health_metrics(app_client):
    models = app_client.get("/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["tiny"] and models["object"] == "list"
    assert app_client.get("/v1/models/tiny", headers=AUTH).json()["max_audio_seconds"] == 30.0
    assert app_client.get("/v1/models/nope", headers=AUTH).status_code == 404
    assert app_client.get("/v1/models").status_code == 401
    assert app_client.get("/health").json()["status"] == "ok"  # open without a key
    post(app_client)
    post(app_client, headers={})
    text = app_client.get("/metrics").text
    assert 'asrctl_requests_total{endpoint="/v1/audio/transcriptions",status="200"} 1.0' in text
    assert 'asrctl_requests_total{endpoint="/v1/audio/transcriptions",status="401"} 1.0' in text
    assert 'asrctl_audio_seconds_total{endpoint="/v1/audio/transcriptions"} 1.0' in text
    for name in ("request_duration_seconds_bucket", "encoder_queue_depth", "requests_generating"):
        assert f"asrctl_{name}" in text


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def test_funasr_realtime_clients_connect_at_the_root(app_client):
    """FunASR's realtime client (``websockets.connect("ws://host:10095")``) uses the root
    path; the page on GET / is unaffected."""
    with app_client.websocket_connect("/", headers=AUTH) as ws:
        ws.send_text("START")
        assert ws.receive_json() == {"event": "started"}
        ws.send_text("STOP")
        assert ws.receive_json()["is_final"] is True
        assert ws.receive_json() == {"event": "stopped"}
    assert app_client.get("/").status_code in (200, 404)  # the page, or --no-ui


def test_websocket_protocol(app_client):
    rng = np.random.default_rng(0)
    speech = [0.1 * rng.standard_normal(SR), np.zeros(SR), 0.1 * rng.standard_normal(SR)]
    audio = np.concatenate(speech)
    with app_client.websocket_connect("/ws", headers=AUTH) as ws:
        ws.send_bytes(pcm16(audio[:1600]))
        assert ws.receive_json() == {"event": "error", "error": "send START before audio"}
        ws.send_text("START")
        assert ws.receive_json() == {"event": "started"}
        ws.send_text("LANGUAGE:xx")
        assert ws.receive_json()["event"] == "error"
        ws.send_text("LANGUAGE:zh")
        assert ws.receive_json() == {"event": "language_set", "language": "zh"}
        ws.send_text("HOTWORDS:阿里, 通义")
        assert ws.receive_json() == {"event": "hotwords_set", "hotwords": ["阿里", "通义"]}
        for i in range(0, len(audio), 1600):
            ws.send_bytes(pcm16(audio[i : i + 1600]))
        ws.send_text("STOP")
        messages = []
        while (message := ws.receive_json()).get("event") != "stopped":
            messages.append(message)
    final = messages[-1]
    assert final["is_final"] and final["partial"] == "" and final["duration_ms"] == 3000
    assert [s["start"] for s in final["sentences"]] == [0, 1780]  # 30 ms frames, 200 ms pad
    assert all(re.fullmatch(r"heard \d+ samples", s["text"]) for s in final["sentences"])
    assert any(m["partial"] and not m["is_final"] for m in messages[:-1])
    assert app_client.model.calls[-1][1].language == "zh"
    with pytest.raises(WebSocketDenialResponse):
        with app_client.websocket_connect("/ws"):
            pass


def realtime_client(model, **realtime):
    options = ServerOptions(served_model_names=("tiny",), realtime=RealtimeOptions(**realtime))
    return TestClient(create_app(ServerState.create(model, options, Path("/m"), Metrics())))


def test_websocket_session_cap_and_idle_timeout():
    with realtime_client(FakeModel(), max_sessions=1, idle_timeout_s=0.3) as client:
        with client.websocket_connect("/ws") as ws:
            with pytest.raises(WebSocketDenialResponse) as denied:
                with client.websocket_connect("/ws"):
                    pass
            assert denied.value.status_code == 503
            assert denied.value.json()["error"]["code"] == "too_many_sessions"
            ws.send_text("START")
            assert ws.receive_json() == {"event": "started"}
            message = ws.receive_json()  # nothing sent for 0.3 s
            assert message["event"] == "error" and "idle" in message["error"]
            assert ws.receive()["type"] == "websocket.close"
        with client.websocket_connect("/ws") as ws:  # the slot is free again
            ws.send_text("START")
            assert ws.receive_json() == {"event": "started"}
        assert "asrctl_websocket_sessions 0.0" in client.get("/metrics").text
    with pytest.raises(OptionsError, match="ws-max-sessions"):
        RealtimeOptions(max_sessions=0)


def test_websocket_resamples_16khz_pcm_to_the_model_rate():
    """VibeVoice-ASR runs at 24 kHz: /ws PCM is 16 kHz, resampled, times stay true."""
    model = FakeModel()
    model.sample_rate = 24000
    speech = 0.1 * np.random.default_rng(3).standard_normal(2 * SR)
    with realtime_client(model) as client, client.websocket_connect("/ws") as ws:
        ws.send_text("START")
        ws.receive_json()
        for i in range(0, len(speech), 1600):
            ws.send_bytes(pcm16(speech[i : i + 1600]))
        ws.send_text("STOP")
        while (message := ws.receive_json()).get("event") != "stopped":
            final = message
    assert final["is_final"] and final["duration_ms"] == 2000
    (sentence,) = final["sentences"]
    assert sentence["end"] == 2000 and sentence["start"] == 0
    n = int(sentence["text"].split()[1])  # the model heard the sentence at 24 kHz
    assert n == 48000


def test_energy_endpointer_locks_at_silence_and_cuts_long_speech():
    rng = np.random.default_rng(1)
    audio = np.concatenate(
        [
            np.zeros(SR // 2),
            0.1 * rng.standard_normal(SR),
            np.zeros(SR),
            0.1 * rng.standard_normal(SR),
        ]
    ).astype(np.float32)
    ep = EnergyEndpointer(
        SR, threshold_db=-40, min_speech_s=0.15, min_silence_s=0.5, pad_s=0.2, max_utterance_s=20
    )
    spans = [s for i in range(0, len(audio), 1600) for s in ep.feed(audio[i : i + 1600])]
    frame = 480  # 30 ms: boundaries fall on frames

    def near(got, seconds):
        return abs(got - seconds * SR) <= frame

    assert len(spans) == 1 and near(spans[0][0], 0.3) and near(spans[0][1], 1.7)
    assert near(ep.speech_start, 2.3)
    (last,) = ep.flush()
    assert near(last[0], 2.3) and last[1] == len(audio)
    assert ep.speech_start is None and ep.flush() == []

    long = EnergyEndpointer(
        SR, threshold_db=-40, min_speech_s=0.15, min_silence_s=0.5, pad_s=0.2, max_utterance_s=1
    )
    spans = long.feed(0.1 * rng.standard_normal(3 * SR)) + long.flush()
    assert all(end - start <= SR for start, end in spans) and spans[-1][1] == 3 * SR
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # no gaps


def test_batcher_groups_concurrent_jobs_and_isolates_failures():
    calls: list[list[int]] = []

    def run(jobs):
        calls.append(list(jobs))
        return [ValueError("odd") if j % 2 else j * 10 for j in jobs]

    async def main():
        batcher = EncoderBatcher(run, window_s=0.05, max_batch=8)
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit(j) for j in range(10)), return_exceptions=True
        )
        await batcher.close()
        with pytest.raises(BatcherClosed):
            await batcher.submit(1)
        return results

    results = asyncio.run(main())
    assert [len(c) for c in calls] == [8, 2]
    assert [r if isinstance(r, int) else "err" for r in results] == [
        0, "err", 20, "err", 40, "err", 60, "err", 80, "err"
    ]  # fmt: skip


def test_batcher_runs_a_lone_job_at_once_and_waits_under_load():
    """A job after a quiet spell (longer than the window) is not held for the window;
    jobs closer together than the window are collected into one batch."""
    calls: list[list[int]] = []

    def run(jobs):
        calls.append(list(jobs))
        return list(jobs)

    async def main():
        batcher = EncoderBatcher(run, window_s=0.5, max_batch=8)
        batcher.start()
        loop = asyncio.get_running_loop()
        waits = []
        for job in (1, 2):
            start = loop.time()
            await batcher.submit(job)
            waits.append(loop.time() - start)
            await asyncio.sleep(0.6)

        async def later(job: int, delay: float) -> int:
            await asyncio.sleep(delay)
            return await batcher.submit(job)

        results = await asyncio.gather(*(later(j, 0.01 * k) for k, j in enumerate((3, 4, 5))))
        await batcher.close()
        return waits, results

    waits, results = asyncio.run(main())
    assert max(waits) < 0.25, waits
    assert results == [3, 4, 5]
    assert calls == [[1], [2], [3], [4, 5]]


def test_subtitles_and_helpers():
    segments = [
        Segment(0.0, 3723.5, "a --> b\n\nc"),
        Segment(3723.5, 3724.0, "  "),
    ]
    assert formats.srt(segments) == "1\n00:00:00,000 --> 01:02:03,500\na -> b\nc\n"
    assert formats.vtt(segments) == "WEBVTT\n\n00:00:00.000 --> 01:02:03.500\na -> b\nc\n"
    assert looks_like_text(b"#EXTM3U\n#EXTINF:1,\nhttp://x/a.ts\n")
    assert looks_like_text(b"ffconcat version 1.0\nfile '/etc/passwd'\n")
    assert not looks_like_text(wav_bytes(0.1)[:1024])
    assert not looks_like_text(b"\xff\xfb\x90\x64" + bytes(100))  # an MP3 frame
    with pytest.raises(OptionsError):
        ServerOptions(port=0)
    with pytest.raises(OptionsError):
        ServerOptions(api_keys=("",))
    with pytest.raises(OptionsError, match="encoder-dtype"):
        ServerOptions(encoder_dtype="fp8")
    assert RealtimeOptions().first_partial_s < RealtimeOptions().partial_interval_s


def test_serve_runs_on_uvloop_where_installed():
    pytest.importorskip("uvloop")
    from asrctl.server.app import event_loop_runner

    with event_loop_runner() as runner:
        assert type(runner.get_loop()).__module__.startswith("uvloop")
        assert runner.run(asyncio.sleep(0, result=7)) == 7


def test_event_loop_lag_is_measured():
    """Work that blocks the loop shows in asrctl_event_loop_lag_seconds."""
    from asrctl.server.metrics import Metrics

    metrics = Metrics()

    async def main():
        watch = asyncio.get_running_loop().create_task(metrics.watch_loop(0.01))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # a handler that blocks the loop
        await asyncio.sleep(0.05)
        watch.cancel()

    asyncio.run(main())
    text = metrics.render().decode()
    total = float(re.search(r"^asrctl_event_loop_lag_seconds_sum (\S+)", text, re.M).group(1))
    count = float(re.search(r"^asrctl_event_loop_lag_seconds_count (\S+)", text, re.M).group(1))
    assert count >= 5 and 0.25 <= total < 1.0
