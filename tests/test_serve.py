"""``asrctl serve`` on asrctl.testing's fake engine: the real AsyncModel (tiny Fun-ASR-Nano
encoder, prompts, encoder batching, streaming, limits) and app, in seconds, no vLLM.

Most tests talk to the app in this process through a TestClient (the official ``openai``
SDK takes it as its HTTP client); the last ones run ``asrctl serve`` itself in a
subprocess: its flags, a transcript equal to ``asrctl transcribe``'s, and SIGTERM with a
request in flight. Token-for-token parity with transformers is in ``test_serve_vllm.py``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from liveserver import in_process_server, live_server, multipart_body
from test_long_audio import parse_srt, parse_vtt

from asrctl import testing
from asrctl.engine import FAKE_ENGINE_ENV, EngineOptions
from asrctl.server.options import ServerOptions

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny"
MAX_TOKENS = 12
MAX_MODEL_LEN = 100  # tiny fixture: 28 positions for 1.5 s, 82 with a hotword, 86 for 29.5 s
SR = 16000
N_CONCURRENT = 24


def _options(**changes) -> ServerOptions:
    fields = {"served_model_names": (MODEL,), "api_keys": (KEY,), "max_tokens": MAX_TOKENS}
    return ServerOptions(**(fields | {"max_upload_mb": 1, "device": "cpu"} | changes))


@pytest.fixture(scope="module")
def client(fun_asr_tiny):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAKE_ENGINE_ENV, "1")
        mp.setitem(sys.modules, "vllm", None)  # the fake path must not need vLLM
        engine = EngineOptions(max_model_len=MAX_MODEL_LEN)
        with in_process_server(fun_asr_tiny, _options(), engine) as c:
            yield c


@pytest.fixture(scope="module")
def sdk(client):
    from openai import OpenAI

    with OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client) as c:
        yield c


def _wav(seconds: float, seed: int, sr: int = SR) -> bytes:
    buf = io.BytesIO()
    noise = 0.1 * np.random.default_rng(seed).standard_normal(round(seconds * sr))
    sf.write(buf, noise.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def clips() -> list[bytes]:
    return [_wav(0.5 + (i % 8) * 0.27, seed=i) for i in range(N_CONCURRENT)]


def _post(client, data: bytes, url="/v1/audio/transcriptions", headers=AUTH, **fields):
    return client.post(url, files={"file": ("a.wav", data)}, data=fields, headers=headers)


def test_openai_sdk_every_response_format(sdk, clips):
    clip = ("a.wav", clips[4])  # 1.58 s
    duration = round(len(sf.read(io.BytesIO(clips[4]))[0]) / SR, 3)
    text = sdk.audio.transcriptions.create(file=clip, model=MODEL).text
    assert text and set(text.split()) <= set(testing.WORDS)
    plain = sdk.audio.transcriptions.create(file=clip, model=MODEL, response_format="text")
    assert plain == text + "\n"  # plain text, not JSON
    verbose = sdk.audio.transcriptions.create(
        file=clip, model=MODEL, response_format="verbose_json", timestamp_granularities=["segment"]
    )
    assert verbose.text == text and verbose.duration == duration and not verbose.words
    (segment,) = verbose.segments
    assert (segment.start, segment.end, segment.text) == (0.0, duration, text)
    assert segment.avg_logprob < 0 and 0 < len(segment.tokens) <= MAX_TOKENS
    assert "no timestamps" in verbose.model_extra["notes"][0]
    srt = sdk.audio.transcriptions.create(file=clip, model=MODEL, response_format="srt")
    assert parse_srt(srt) == [(0.0, duration, text)]
    vtt = sdk.audio.transcriptions.create(file=clip, model=MODEL, response_format="vtt")
    assert parse_vtt(vtt) == [(0.0, duration, text)]

    def sampled(seed: int) -> str:
        extra = {"seed": seed}
        return sdk.audio.transcriptions.create(
            file=clip, model=MODEL, temperature=1.0, extra_body=extra
        ).text

    assert sampled(1) == sampled(1)  # the seed reaches the engine
    assert len({sampled(s) for s in range(5)} - {text}) >= 3


def test_openai_sdk_streaming(sdk, clips):
    clip = ("a.wav", clips[5])
    expected = sdk.audio.transcriptions.create(file=clip, model=MODEL).text
    *deltas, done = list(sdk.audio.transcriptions.create(file=clip, model=MODEL, stream=True))
    assert len(deltas) > 1 and all(e.type == "transcript.text.delta" for e in deltas)
    assert done.type == "transcript.text.done" and done.text == expected
    assert "".join(e.delta for e in deltas) == expected
    assert 0 < done.usage.output_tokens <= MAX_TOKENS
    details = done.usage.input_token_details
    assert done.usage.input_tokens == details.audio_tokens + details.text_tokens


def test_concurrent_requests_are_batched_and_match_one_at_a_time(client, sdk, clips):
    one_by_one = [
        sdk.audio.transcriptions.create(file=("a.wav", c), model=MODEL).text for c in clips
    ]
    assert len(set(one_by_one)) == len(clips)  # different audio, different text
    before = _encoder_batches(client)
    with ThreadPoolExecutor(N_CONCURRENT) as pool:
        responses = list(pool.map(lambda c: _post(client, c), clips))
    assert [r.json()["text"] for r in responses] == one_by_one
    batches, jobs = (a - b for a, b in zip(_encoder_batches(client), before, strict=True))
    assert jobs == N_CONCURRENT and batches < N_CONCURRENT  # audio was encoded in batches


def _encoder_batches(client) -> tuple[float, float]:
    """(encoder batches run, utterances encoded) so far, from /metrics."""
    text = client.get("/metrics").text
    count = float(re.search(r"^asrctl_encoder_batch_size_count (\S+)", text, re.M).group(1))
    total = float(re.search(r"^asrctl_encoder_batch_size_sum (\S+)", text, re.M).group(1))
    return count, total


def test_funasr_asr_endpoint(client, sdk, clips):
    expected = sdk.audio.transcriptions.create(file=("a.wav", clips[6]), model=MODEL).text
    body = _post(client, clips[6], url="/asr", hotwords="", language="").json()
    duration = round(len(sf.read(io.BytesIO(clips[6]))[0]) / SR, 3)
    assert body["text"] == expected and body["duration"] == duration
    assert body["segments"] == [{"text": expected, "start": 0.0, "end": duration}]
    assert body["processing_time"] > 0 and body["rtf"] > 0
    hot = _post(client, clips[6], url="/asr", hotwords="hello", language="en").json()
    assert hot["text"] and hot["text"] != expected  # another prompt, other embeddings


def test_chat_completions_transcribe_as_the_transcriptions_endpoint(sdk, clips):
    expected = sdk.audio.transcriptions.create(file=("a.wav", clips[8]), model=MODEL).text
    data = base64.b64encode(clips[8]).decode()
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    messages = [{"role": "user", "content": [part]}]
    chat = sdk.chat.completions.create(model=MODEL, messages=messages)
    (choice,) = chat.choices
    assert choice.message.content == expected and choice.finish_reason == "stop"
    assert 0 < chat.usage.completion_tokens <= MAX_TOKENS
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected


def test_websocket_partials_then_final(client):
    rng = np.random.default_rng(5)
    audio = np.concatenate(
        [
            0.1 * rng.standard_normal(round(1.6 * SR)),
            np.zeros(SR),
            0.1 * rng.standard_normal(round(1.2 * SR)),
        ]
    )
    pcm = (audio * 32767).astype("<i2").tobytes()
    frame = SR // 10 * 2  # 100 ms of PCM16
    messages = []
    with client.websocket_connect("/ws", headers=AUTH) as ws:
        ws.send_text("START")
        assert ws.receive_json() == {"event": "started"}
        for i in range(0, len(pcm), frame):
            ws.send_bytes(pcm[i : i + frame])
            time.sleep(0.03)  # partial decodes run while audio arrives
        ws.send_text("STOP")
        while (m := ws.receive_json()).get("event") != "stopped":
            messages.append(m)
    *interim, final = messages
    assert any(m["partial"] for m in interim), messages  # partial text while audio arrived
    assert not any(m["is_final"] for m in interim)
    assert final["is_final"] and final["partial"] == "" and final["duration_ms"] == 3800
    assert [s["start"] for s in final["sentences"]] == [0, 2380]
    assert all(set(s["text"].split()) <= set(testing.WORDS) for s in final["sentences"])


def test_bad_requests_get_their_codes_and_the_server_keeps_answering(client, sdk, clips):
    import openai

    good = sdk.audio.transcriptions.create(file=("a.wav", clips[7]), model=MODEL).text

    def error(response, status: int) -> dict:
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        return body

    assert error(_post(client, clips[7], headers={}), 401)["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        sdk.audio.transcriptions.create(file=("a.wav", clips[7]), model="whisper-1")
    with pytest.raises(openai.BadRequestError, match="word timestamps are not available"):
        sdk.audio.transcriptions.create(
            file=("a.wav", clips[7]),
            model=MODEL,
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
    assert error(_post(client, b""), 400)["param"] == "file"
    assert "could not decode" in error(_post(client, b"RIFF\x00\x01garbage" * 50), 400)["message"]
    nan = io.BytesIO()
    sf.write(nan, np.full(8000, np.nan, dtype=np.float32), SR, format="WAV", subtype="FLOAT")
    assert "NaN" in error(_post(client, nan.getvalue()), 400)["message"]
    # 29.5 s with a hotword fits the model's 30 s window, not this server's --max-model-len
    too_long = error(_post(client, _wav(29.5, seed=1, sr=8000), prompt="hello"), 400)["message"]
    assert f"--max-model-len {MAX_MODEL_LEN}" in too_long and "29.5 s of audio" in too_long
    assert "at most 30 s" in error(_post(client, _wav(31.0, seed=1, sr=8000)), 413)["message"]
    assert "language" in error(_post(client, clips[7], language="xx"), 400)["param"]
    assert sdk.audio.transcriptions.create(file=("a.wav", clips[7]), model=MODEL).text == good
    assert client.get("/health").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    for status in ("200", "400", "401", "404", "413"):
        assert f'endpoint="/v1/audio/transcriptions",status="{status}"' in metrics


def test_a_dead_engine_is_a_500_and_an_unhealthy_server(fun_asr_tiny, monkeypatch):
    monkeypatch.setenv(FAKE_ENGINE_ENV, "fail=step")
    engine = EngineOptions(max_model_len=MAX_MODEL_LEN)
    with in_process_server(fun_asr_tiny, _options(), engine) as dying:
        assert dying.get("/health").status_code == 200
        response = _post(dying, _wav(1.0, seed=0))
        assert response.status_code == 500 and response.json()["error"]["code"] == "engine_error"
        assert "died" in response.json()["error"]["message"]
        health = dying.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "error"


@pytest.fixture(scope="module")
def live(fun_asr_tiny, tmp_path_factory):
    """``asrctl serve`` itself on the fake engine, a little slow per step (SIGTERM test)."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--model", str(fun_asr_tiny), "--served-model-name", MODEL, "--api-key", KEY]
    args += ["--max-tokens", str(MAX_TOKENS), "--max-model-len", str(MAX_MODEL_LEN)]
    env = os.environ | {FAKE_ENGINE_ENV: "delay=0.01"}
    with live_server(args, log, env=env) as srv:
        yield srv


def test_serve_and_transcribe_print_the_same_text(
    live, fun_asr_tiny, clips, asrctl_cli, tmp_path, monkeypatch
):
    """Both pipelines build the same prompt for the same audio (the fake answers by it)."""
    served = httpx.post(
        f"{live.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", clips[3])},
        headers=AUTH,
        timeout=60,
    ).json()["text"]
    (tmp_path / "a.wav").write_bytes(clips[3])
    monkeypatch.setenv(FAKE_ENGINE_ENV, "1")
    run = asrctl_cli("transcribe", tmp_path / "a.wav", "--model", fun_asr_tiny)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"a {served}\n"


def test_sigterm_finishes_the_request_in_flight(live, clips):
    """Last: shuts the module's server down. A slow upload is in flight at SIGTERM."""
    expected = httpx.post(
        f"{live.url}/v1/audio/transcriptions",
        files={"file": ("a.wav", clips[0])},
        headers=AUTH,
        timeout=60,
    ).json()["text"]
    boundary = "asrctltestboundary"
    body = multipart_body(clips[0], MODEL, boundary)
    sent_first = threading.Event()

    def slow_body():
        for i in range(0, len(body), len(body) // 4 + 1):
            yield body[i : i + len(body) // 4 + 1]
            sent_first.set()
            time.sleep(0.3)

    result = {}

    def upload():
        result["response"] = httpx.post(
            f"{live.url}/v1/audio/transcriptions",
            content=slow_body(),
            headers=AUTH | {"content-type": f"multipart/form-data; boundary={boundary}"},
            timeout=60,
        )

    thread = threading.Thread(target=upload)
    thread.start()
    assert sent_first.wait(30)
    live.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    response = result["response"]
    assert response.status_code == 200, response.text
    assert response.json()["text"] == expected
    assert live.proc.wait(timeout=60) == 0, live.tail()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{live.url}/health", timeout=2)
    assert "Traceback" not in live.tail()
