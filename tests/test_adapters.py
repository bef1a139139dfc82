"""Family detection, model-directory checks, and the Fun-ASR-Nano adapter."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml

from asrctl.adapters.base import PromptOptions
from asrctl.adapters.fun_asr_nano import FunAsrNanoAdapter
from asrctl.adapters.registry import ADAPTERS, detect, load_adapter
from asrctl.errors import ModelDirError, OptionsError, UnknownFamilyError
from asrctl.models.funasr_adaptor import fun_asr_audio_token_count

LLM = "Qwen3-0.6B"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
HOTWORD_PREAMBLE = (
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n"
    "**上下文信息：**\n\n\n热词列表：[{}]\n"
)


# --- registry ---------------------------------------------------------------------------


def test_detect_fixture(fun_asr_tiny: Path) -> None:
    adapter = detect(fun_asr_tiny)
    assert isinstance(adapter, FunAsrNanoAdapter)
    assert adapter.family.name == "fun-asr-nano"
    assert adapter.check() == []


def test_detect_through_symlink(tmp_path: Path, fun_asr_tiny: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(fun_asr_tiny, target_is_directory=True)
    adapter = load_adapter(link)
    assert adapter.model_dir == fun_asr_tiny.resolve()
    assert adapter.model_dir != link


def _random_files(d: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    (d / "weights.bin").write_bytes(bytes(torch.randint(0, 256, (4096,), generator=gen).tolist()))
    (d / "config.yaml").write_bytes(bytes(torch.randint(0, 256, (512,), generator=gen).tolist()))
    (d / "notes.txt").write_text("not a model\n")


@pytest.mark.parametrize(
    "populate",
    [
        pytest.param(lambda d: None, id="empty"),
        pytest.param(_random_files, id="random-files"),
        pytest.param(lambda d: (d / "config.yaml").write_text("just text\n"), id="yaml-scalar"),
        pytest.param(lambda d: (d / "config.yaml").write_text("- a\n- b\n"), id="yaml-list"),
        pytest.param(lambda d: (d / "config.yaml").write_text("a: [\n"), id="yaml-broken"),
        pytest.param(
            lambda d: (d / "config.yaml").write_text("model: SenseVoiceSmall\n"), id="other-model"
        ),
    ],
)
def test_unknown_layout(tmp_path: Path, populate: Callable[[Path], None]) -> None:
    populate(tmp_path)
    with pytest.raises(UnknownFamilyError) as info:
        detect(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    for family in ADAPTERS:
        assert family in message
    assert "Fun-ASR-Nano" in message and "model.pt" in message
    assert info.value.hint


@pytest.mark.parametrize(
    ("remove", "expected"),
    [
        (["model.pt"], ["model.pt — torch checkpoint with audio_encoder.*"]),
        ([f"{LLM}/tokenizer.json"], [f"{LLM}/tokenizer.json — Qwen3 tokenizer"]),
        (
            ["model.pt", f"{LLM}/tokenizer.json"],
            ["missing required file: model.pt", f"missing required file: {LLM}/tokenizer.json"],
        ),
    ],
)
def test_missing_files_are_named(
    fun_asr_copy: Path, remove: list[str], expected: list[str]
) -> None:
    for name in remove:
        (fun_asr_copy / name).unlink()
    with pytest.raises(ModelDirError) as info:
        load_adapter(fun_asr_copy)
    assert len(info.value.problems) == len(remove)
    for text in expected:
        assert any(text in p for p in info.value.problems), info.value.problems
        assert text in str(info.value)


def test_check_contents_lists_every_problem(fun_asr_copy: Path) -> None:
    conf = yaml.safe_load((fun_asr_copy / "config.yaml").read_text())
    del conf["audio_adaptor_conf"]
    (fun_asr_copy / "config.yaml").write_text(yaml.safe_dump(conf))
    llm_config = fun_asr_copy / LLM / "config.json"
    llm_config.write_text(json.dumps({**json.loads(llm_config.read_text()), "model_type": "llama"}))
    problems = FunAsrNanoAdapter(fun_asr_copy).check()
    assert len(problems) == 2, problems
    assert "audio_adaptor_conf" in problems[0]
    assert "model_type should be qwen3" in problems[1] and "'llama'" in problems[1]
    with pytest.raises(ModelDirError, match="audio_adaptor_conf"):
        load_adapter(fun_asr_copy)


def test_broken_llm_symlink_names_target(tmp_path: Path, fun_asr_copy: Path) -> None:
    target = tmp_path / "gone" / LLM
    shutil.rmtree(fun_asr_copy / LLM)
    (fun_asr_copy / LLM).symlink_to(target, target_is_directory=True)
    with pytest.raises(ModelDirError) as info:
        load_adapter(fun_asr_copy)
    assert f"{LLM} is a broken symlink to {target}" in info.value.problems[0]
    assert str(target) in str(info.value)


@pytest.mark.parametrize("kind", ["missing", "file", "broken-link"])
def test_bad_model_dir_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model"
    if kind == "file":
        path.write_text("x")
    elif kind == "broken-link":
        path.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ModelDirError) as info:
        detect(path)
    assert str(path) in str(info.value)
    assert info.value.problems


# --- prompt and postprocessing ----------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(fun_asr_tiny: Path) -> FunAsrNanoAdapter:
    return FunAsrNanoAdapter(fun_asr_tiny)


@pytest.mark.parametrize(
    ("options", "instruction"),
    [
        (PromptOptions(), "语音转写："),
        (PromptOptions(language="zh"), "语音转写成中文："),
        (PromptOptions(language="en"), "语音转写成英文："),
        (PromptOptions(language="ja"), "语音转写成日文："),
        (PromptOptions(language="EN"), "语音转写成英文："),
        (PromptOptions(language="中文"), "语音转写成中文："),
        (PromptOptions(language="auto"), "语音转写："),
        (PromptOptions(itn=False), "语音转写，不进行文本规整："),
        (PromptOptions(language="en", itn=False), "语音转写成英文，不进行文本规整："),
        (
            PromptOptions(hotwords=("阿里巴巴", "Fun ASR")),
            HOTWORD_PREAMBLE.format("阿里巴巴, Fun ASR") + "语音转写：",
        ),
        (
            PromptOptions(language="zh", hotwords=("通义",), itn=False),
            HOTWORD_PREAMBLE.format("通义") + "语音转写成中文，不进行文本规整：",
        ),
    ],
)
def test_prompt(adapter: FunAsrNanoAdapter, options: PromptOptions, instruction: str) -> None:
    prompt = adapter.prompt(options)
    assert prompt.prefix == SYSTEM + instruction
    assert prompt.suffix == SUFFIX


@pytest.mark.parametrize("language", ["fr", "klingon", ""])
def test_prompt_unsupported_language(adapter: FunAsrNanoAdapter, language: str) -> None:
    with pytest.raises(OptionsError) as info:
        adapter.prompt(PromptOptions(language=language))
    assert info.value.hint and "zh" in info.value.hint


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("hello world<|im_end|>", "hello world"),
        ("<|endoftext|> 你好，世界。 <|im_end|><|endoftext|>", "你好，世界。"),
        ("你好/sil世界", "你好 世界"),
        ("a /sil  /sil b", "a b"),
        ("  one\n\ttwo   three \n", "one two three"),
        ("keep <b> and [x]", "keep <b> and [x]"),
        ("", ""),
    ],
)
def test_postprocess(adapter: FunAsrNanoAdapter, raw: str, clean: str) -> None:
    assert adapter.postprocess(raw) == clean


# --- audio encoder ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(adapter: FunAsrNanoAdapter):
    return adapter.audio_encoder("cpu", torch.float32)


def _load(path: Path) -> torch.Tensor:
    samples, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    return torch.from_numpy(samples)


def test_hugging_face_layout_gives_no_word_timing(encoder, make_wav) -> None:
    """The default fixture is the HF release: no CTC head, so no alignment data."""
    assert not encoder.word_timing
    with torch.no_grad():
        embeds, timing = encoder.encode([_load(make_wav("a.wav", 1.0))], timing=True)
    assert timing is None and len(embeds) == 1


def test_encoder_loads_checkpoint_strictly(encoder, fun_asr_tiny: Path) -> None:
    state = torch.load(fun_asr_tiny / "model.pt", weights_only=True)["state_dict"]
    audio = {k: v for k, v in state.items() if not k.startswith("llm.")}
    ours = encoder.state_dict()
    assert ours.keys() == audio.keys()
    for key, value in audio.items():
        assert ours[key].dtype == torch.float32
        assert torch.equal(ours[key], value.float()), key


@pytest.mark.parametrize("seconds", [0.5, 1.0, 3.3])
def test_encoder_token_count(encoder, fun_asr_tiny: Path, make_wav, seconds: float) -> None:
    wave = _load(make_wav("a.wav", seconds, seed=3))
    fbank_frames = 1 + (len(wave) - 400) // 160  # 25 ms windows, 10 ms shift, snip edges
    hidden = json.loads((fun_asr_tiny / LLM / "config.json").read_text())["hidden_size"]
    with torch.no_grad():
        (out,) = encoder([wave])
    assert out.shape == (fun_asr_audio_token_count(math.ceil(fbank_frames / 6)), hidden)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_encoder_padded_batch_equals_alone(encoder, make_wav) -> None:
    waves = [_load(make_wav(f"{i}.wav", s, seed=i)) for i, s in enumerate((3.3, 0.5, 1.0, 2.2))]
    with torch.no_grad():
        batched = encoder(waves)
        alone = [encoder([w])[0] for w in waves]
    assert [b.shape for b in batched] == [a.shape for a in alone]
    for i, (b, a) in enumerate(zip(batched, alone, strict=True)):
        diff = float((b - a).abs().max())
        assert diff < 1e-4, f"utterance {i}: batched vs alone max abs diff {diff:.3g}"
    assert not torch.allclose(alone[2], alone[3][: len(alone[2])])


@pytest.mark.parametrize("seconds", [0.5, 1.0, 3.3, 29.97])
def test_audio_positions_equal_encoder_output(
    adapter: FunAsrNanoAdapter, encoder, make_wav, seconds: float
) -> None:
    wave = _load(make_wav("a.wav", seconds, seed=5))
    with torch.no_grad():
        (out,) = encoder([wave])
    assert adapter.audio_positions(len(wave)) == len(out)
