"""``POST /v1/chat/completions`` with audio (asrctl.server.chat_api), against the in-process
stand-in model of test_server.py: the seed clients' request shapes, the official SDK, audio
by reference, sampling fields and the operator's override."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_server import AUTH, KEY, FakeModel, wav_bytes

from asrctl.pipeline import SamplingOverride
from asrctl.server.app import create_app
from asrctl.server.metrics import Metrics
from asrctl.server.options import ServerOptions
from asrctl.server.state import ServerState

B64 = base64.b64encode(wav_bytes(1.0)).decode()


def _client(tmp_path: Path, **options) -> TestClient:
    opts = ServerOptions(served_model_names=("tiny",), api_keys=(KEY,), **options)
    state = ServerState.create(FakeModel(), opts, tmp_path, Metrics())
    return TestClient(create_app(state))


@pytest.fixture
def client(tmp_path: Path):
    with _client(tmp_path, allowed_local_media_path=tmp_path) as c:
        yield c


def _chat(client: TestClient, content: list, **body):
    messages = [{"role": "user", "content": content}]
    return client.post("/v1/chat/completions", json={"messages": messages, **body}, headers=AUTH)


def _audio_part() -> dict:
    return {"type": "input_audio", "input_audio": {"data": B64, "format": "wav"}}


def test_seed_004_glm_client_shape(client: TestClient) -> None:
    """GLM-ASR users' request: text with an <|audio|> marker, then input_audio."""
    text = {"type": "text", "text": "Please transcribe this audio.<|audio|>"}
    r = _chat(client, [text, _audio_part()], max_completion_tokens=256, temperature=0.0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "heard 16000 samples"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}
    _, prompt, decode = client.app.state.asr.model.calls[-1]
    assert decode.max_tokens == 256 and decode.temperature == 0.0
    # Fun-ASR-Nano takes the text as hotword context; the marker is gone
    assert prompt.hotwords == ("Please transcribe this audio.",)


def test_seed_003_data_url_with_pinned_decoding(tmp_path: Path) -> None:
    """VibeVoice users' request: a base64 data: URL; the operator pins decoding."""
    pinned = SamplingOverride(temperature=0.0, repetition_penalty=1.1, frequency_penalty=0.5)
    with _client(tmp_path, sampling_override=pinned) as client:
        url = {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{B64}"}}
        r = _chat(client, [url], temperature=0.9, repetition_penalty=1.0, top_p=0.5)
        assert r.status_code == 200, r.text
        decode = client.app.state.asr.model.calls[-1][2]
        # the request's values reach the model; the pipeline applies the override on top
        assert (decode.temperature, decode.top_p) == (0.9, 0.5)
        assert pinned.apply(decode).temperature == 0.0


def test_stream_sends_chunks_usage_and_done(client: TestClient) -> None:
    r = _chat(client, [_audio_part()], stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "heard 16000 samples"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_official_sdk_client(client: TestClient) -> None:
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client)
    resp = sdk.chat.completions.create(
        model="tiny",
        max_completion_tokens=64,
        temperature=0.0,
        messages=[{"role": "user", "content": [_audio_part()]}],
    )
    assert resp.choices[0].message.content == "heard 16000 samples"
    stream = sdk.chat.completions.create(
        model="tiny", stream=True, messages=[{"role": "user", "content": [_audio_part()]}]
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "heard 16000 samples"
    )


def test_local_files_only_under_the_allowed_folder(client: TestClient, tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(wav_bytes(0.5))
    ok = _chat(client, [{"type": "audio_url", "audio_url": {"url": f"file://{tmp_path}/a.wav"}}])
    assert ok.status_code == 200, ok.text
    outside = tmp_path.parent / "outside.wav"
    outside.write_bytes(wav_bytes(0.5))
    (tmp_path / "link.wav").symlink_to(outside)
    for url in (
        f"file://{outside}",
        f"file://{tmp_path}/../outside.wav",
        f"file://{tmp_path}/link.wav",
    ):
        r = _chat(client, [{"type": "audio_url", "audio_url": {"url": url}}])
        assert r.status_code == 400 and "allowed media path" in r.json()["error"]["message"]


def test_file_urls_off_by_default_and_no_fetching(tmp_path: Path) -> None:
    with _client(tmp_path) as client:
        (tmp_path / "a.wav").write_bytes(wav_bytes(0.5))
        r = _chat(client, [{"type": "audio_url", "audio_url": {"url": f"file://{tmp_path}/a.wav"}}])
        assert r.status_code == 400 and "--allowed-local-media-path" in r.json()["error"]["message"]
        r = _chat(client, [{"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:9/a.wav"}}])
        assert r.status_code == 400 and "not fetched" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "no audio"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}]},
         "messages"),
        ({"top_p": 3}, "top_p"),
        ({"max_tokens": "9"}, "max_tokens"),
        ({"model": "other"}, "model"),
    ],
)  # fmt: skip
def test_bad_requests_name_the_field(client: TestClient, body: dict, param: str) -> None:
    full = {"messages": [{"role": "user", "content": [_audio_part()]}]} | body
    r = client.post("/v1/chat/completions", json=full, headers=AUTH)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param


def test_not_json_and_no_key(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", content=b"{", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert client.post("/v1/chat/completions", json={}).status_code == 401


def test_glm_takes_the_chat_text_as_its_instruction(tmp_path: Path) -> None:
    from asrctl.adapters.base import PromptOptions
    from asrctl.adapters.registry import load_adapter
    from asrctl.fixtures import make_fixture

    adapter = load_adapter(make_fixture("glm-asr-nano", tmp_path / "glm"))
    assert adapter.family.chat_text == "instruction"
    default = adapter.prompt(PromptOptions())
    own = adapter.prompt(PromptOptions(instruction="Transcribe this meeting verbatim."))
    assert "Transcribe this meeting verbatim." in own.prefix + own.suffix
    assert own != default and adapter.prompt(PromptOptions()) == default
