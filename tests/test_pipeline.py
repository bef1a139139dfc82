"""The request life cycle's rules (asrctl.pipeline), decided once for every entry point:
decoding options, the operator's override, the token cap and penalty, text clean-up."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from asrctl import engine as engine_module
from asrctl.adapters.base import PromptOptions
from asrctl.engine import Generation
from asrctl.errors import OptionsError
from asrctl.pipeline import (
    DEFAULT_MAX_TOKENS,
    DecodeOptions,
    Pipeline,
    SamplingOverride,
)
from asrctl.transcribe import encode_sorted

SR = 16000


@pytest.fixture
def pipeline(fun_asr_tiny: Path, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    """The tiny Fun-ASR-Nano's pipeline (real adapter, export, encoder and prompt text);
    vLLM replaced by a stand-in holding only its config (nothing is generated here)."""
    vllm = SimpleNamespace(model_config=SimpleNamespace(max_model_len=256), shutdown=lambda: 0)
    monkeypatch.setattr(engine_module, "start_vllm", lambda *a, **k: vllm)
    return Pipeline(fun_asr_tiny, device="cpu")


def test_encoder_precision_is_set_after_vllm_starts(
    fun_asr_tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vLLM worker in this process (an in-process engine core) sets the float32 matmul
    precision to its own default while it starts; the encoder's tf32 must win."""
    import torch

    def start_like_vllm(*args, **kwargs):
        torch.set_float32_matmul_precision("highest")  # what vLLM's GPU worker does
        return SimpleNamespace(model_config=SimpleNamespace(max_model_len=256))

    monkeypatch.setattr(engine_module, "start_vllm", start_like_vllm)
    old = torch.get_float32_matmul_precision()
    try:
        Pipeline(fun_asr_tiny, device="cpu", encoder_dtype="tf32")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(old)


def _noise(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal(round(SR * seconds))).astype(np.float32)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("temperature", 2.5),
        ("temperature", -1),
        ("top_p", 0),
        ("top_k", 0),
        ("repetition_penalty", 0),
        ("frequency_penalty", 3),
        ("presence_penalty", -3),
        ("tokens_per_second", 0),
    ],
)
def test_decode_options_name_the_field_out_of_range(field: str, value: float) -> None:
    with pytest.raises(OptionsError, match=f"^{field} must"):
        DecodeOptions(**{field: value})


def test_sampling_override_parses_json_or_a_file(tmp_path: Path) -> None:
    pinned = SamplingOverride.parse('{"temperature": 0, "repetition_penalty": 1.1}')
    asked = DecodeOptions(temperature=0.9, repetition_penalty=1.0, top_p=0.5)
    assert pinned.apply(asked) == DecodeOptions(temperature=0, repetition_penalty=1.1, top_p=0.5)
    path = tmp_path / "pin.json"
    path.write_text(json.dumps({"max_tokens": 7}))
    assert SamplingOverride.parse(str(path)).apply(DecodeOptions()).max_tokens == 7
    with pytest.raises(OptionsError, match=r"unknown field.*beam_width.*accepted: max_tokens"):
        SamplingOverride.parse('{"beam_width": 3}')
    with pytest.raises(OptionsError, match=r"^temperature must"):
        SamplingOverride.parse('{"temperature": 9}')
    with pytest.raises(OptionsError, match="neither a JSON object nor a readable file"):
        SamplingOverride.parse(str(tmp_path / "missing.json"))
    with pytest.raises(OptionsError, match="must be a JSON object"):
        (tmp_path / "list.json").write_text("[1]")
        SamplingOverride.parse(str(tmp_path / "list.json"))


def test_token_cap_and_penalty_rules(pipeline: Pipeline) -> None:
    (enc,) = pipeline.encode([_noise(2.0)], [PromptOptions()])
    room = pipeline.max_model_len - len(enc.prompt)
    default = pipeline.decoding(DecodeOptions(), enc)
    assert default.max_tokens == min(DEFAULT_MAX_TOKENS, room)  # Fun-ASR-Nano: no own cap
    assert default.repetition_penalty == 1.0  # the family's default
    assert pipeline.decoding(DecodeOptions(max_tokens=5), enc).max_tokens == 5
    assert pipeline.decoding(DecodeOptions(repetition_penalty=1.3), enc).repetition_penalty == 1.3
    fixed = pipeline.decoding(DecodeOptions(tokens_per_second=4.0), enc)
    assert (fixed.max_tokens, fixed.ignore_eos) == (8, True)  # ceil(4 × 2 s), EOS ignored
    pipeline.max_tokens_cap = 3  # the operator's cap beats the caller
    assert pipeline.decoding(DecodeOptions(max_tokens=5), enc).max_tokens == 3
    pipeline.sampling_override = SamplingOverride(max_tokens=2, temperature=0.0)
    pinned = pipeline.decoding(DecodeOptions(max_tokens=5, temperature=1.0), enc)
    assert (pinned.max_tokens, pinned.temperature) == (2, 0.0)


def test_prompts_that_leave_no_room_are_refused(pipeline: Pipeline) -> None:
    one_second = pipeline.prompt_positions(SR, PromptOptions())
    pipeline.engine.engine.model_config.max_model_len = one_second  # no position left
    why = pipeline.unfit("k", SR, PromptOptions(), hint="raise it", window=True)
    assert why is not None and why.startswith(f"k: prompt of {one_second} positions (1.0 s")
    assert why.endswith("raise it")
    window = pipeline.unfit("k", 31 * SR, PromptOptions(), hint="", window=True)
    assert window is not None and "at most 30 s per pass" in window
    (enc,) = pipeline.encode([_noise(1.0)], [PromptOptions()])
    assert len(enc.prompt) == one_second  # the length formula equals the real prompt
    with pytest.raises(OptionsError, match="exceeds --max-model-len"):
        pipeline.decoding(DecodeOptions(), enc)


def test_finish_cleans_text_unless_raw(pipeline: Pipeline) -> None:
    (enc,) = pipeline.encode([_noise(1.0)], [PromptOptions()])
    looped = "  hello " + "la " * 40 + "\ufffd"
    gen = Generation((1, 2, 3), looped, "length", cumulative_logprob=-3.0)
    (clean,) = pipeline.finish([("k", enc, gen)], DecodeOptions(logprobs=True))
    assert clean.text.startswith("hello la") and len(clean.text) < len(looped.strip())
    assert clean.guard_truncated and clean.avg_logprob == -1.0
    assert (clean.key, clean.duration, clean.finish_reason) == ("k", 1.0, "length")
    assert (clean.prompt_tokens, clean.audio_tokens) == (len(enc.prompt), enc.audio_tokens)
    (raw,) = pipeline.finish([("k", enc, gen)], DecodeOptions(raw_text=True))
    assert raw.text == looped and not raw.guard_truncated


def test_an_encoder_pass_out_of_memory_is_encoded_again_in_halves(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """vLLM holds most of a GPU: a pass that runs out of memory is split, down to one
    utterance, and the others keep their embeddings; one that still fails alone raises."""
    import torch

    waves = [_noise(s) for s in (1.0, 1.5, 0.7, 2.0, 1.2)]
    prompts = [PromptOptions()] * len(waves)
    want = pipeline.encode(waves, prompts)
    real = pipeline.encoder.encode
    want_embeds = encode_sorted(real, waves, len(waves))[0]
    passes: list[int] = []

    def at_most_two(batch, *, timing=False):
        passes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(batch, timing=timing)

    monkeypatch.setattr(pipeline.encoder, "encode", at_most_two)
    with caplog.at_level("WARNING", logger="asrctl"):
        got = pipeline.encode(waves, prompts)
        pipeline.encode(waves, prompts)
    assert passes[:5] == [5, 2, 3, 1, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2)
    assert [len(g.prompt) for g in got] == [len(w.prompt) for w in want]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.prompt, w.prompt, rtol=1e-4, atol=1e-5)
    assert sum("encoding it in halves" in r.getMessage() for r in caplog.records) == 1
    # the embeddings path (Transcriber.encode) takes the same pass
    got_embeds = encode_sorted(pipeline.encoder_pass, waves, len(waves))[0]
    for g, w in zip(got_embeds, want_embeds, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)

    def never(batch, *, timing=False):
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(pipeline.encoder, "encode", never)
    with pytest.raises(torch.OutOfMemoryError):
        pipeline.encode(waves[:1], prompts[:1])


def test_encoder_budget_keeps_the_familys_memory_bound(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    assert pipeline.encoder_budget(960.0) == 960 * SR
    assert pipeline.encoder_budget(None) is None
    family = replace(pipeline.adapter.family, max_encoder_batch_seconds=120.0)
    monkeypatch.setattr(pipeline.adapter, "family", family)
    assert pipeline.encoder_budget(960.0) == 120 * SR
    assert pipeline.encoder_budget(60.0) == 60 * SR
    assert pipeline.encoder_budget(None) == 120 * SR


def test_a_gpu_encoder_runs_on_its_own_stream(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU every pass of ``encode`` runs inside one stream of the encoder's own (so
    its kernels can run beside an in-process vLLM's), created once; on a CPU, none."""
    import torch

    entered: list[object] = []
    created: list[object] = []

    class FakeStream:
        def __init__(self, device=None) -> None:
            created.append(self)

    class Within:
        def __init__(self, stream) -> None:
            self.stream = stream

        def __enter__(self):
            entered.append(self.stream)

        def __exit__(self, *exc):
            entered.append(None)

    seen: list[object] = []
    real = pipeline.encoder.encode

    def recording(batch, *, timing=False):
        seen.append(entered[-1] if entered else "none")
        return real(batch, timing=timing)

    monkeypatch.setattr(pipeline.encoder, "encode", recording)
    waves = [_noise(1.0), _noise(0.5)]
    pipeline.encode(waves, [PromptOptions()] * 2)
    assert seen == ["none"] and not created  # a CPU encoder: no stream
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", Within)
    monkeypatch.setattr(pipeline, "device", "cuda")
    pipeline.encode(waves, [PromptOptions()] * 2)
    pipeline.encode(waves, [PromptOptions()] * 2)
    assert len(created) == 1 and seen[1:] == [created[0], created[0]]
    assert entered[-1] is None  # left after each pass
