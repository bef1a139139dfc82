"""asrctl as a vLLM plugin, without an engine: ``asrctl setup`` writes ``DIR/.asrctl/vllm``
(the folder vLLM loads), registration is cheap and never raises, and the multimodal
processor builds the family's prompt and audio as asrctl's pipeline does (vLLM's config
and processor, no engine). tests/test_vllm_plugin_engine.py runs it in vLLM.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from speechlike import noise

REPO = Path(__file__).resolve().parents[1]


# -- setup and registration (no engine) ----------------------------------------------------


def setup_model(model_dir: Path) -> Path:
    """``asrctl setup DIR`` as a user runs it; returns the vllm_dir it prints."""
    out = subprocess.run(
        [sys.executable, "-m", "asrctl", "setup", str(model_dir)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    fields = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return Path(fields["vllm_dir"])


@pytest.fixture(scope="module")
def fun_asr_vllm_dir(fun_asr_tiny: Path) -> Path:
    return setup_model(fun_asr_tiny)


def test_setup_writes_a_vllm_folder_beside_the_export(fun_asr_tiny, fun_asr_vllm_dir):
    from asrctl.vllm_plugin import ARCH

    assert fun_asr_vllm_dir == fun_asr_tiny / ".asrctl" / "vllm"
    config = json.loads((fun_asr_vllm_dir / "config.json").read_text())
    llm = json.loads((fun_asr_tiny / ".asrctl" / "llm" / "config.json").read_text())
    assert config["architectures"] == [ARCH]
    section = config["asrctl"]
    assert section["family"] == "fun-asr-nano"
    assert section["model_dir"] == str(fun_asr_tiny)
    assert section["text_architectures"] == llm["architectures"]
    assert {k: v for k, v in config.items() if k not in ("architectures", "asrctl")} == {
        k: v for k, v in llm.items() if k != "architectures"
    }
    weights = fun_asr_vllm_dir / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (
        fun_asr_tiny / ".asrctl" / "llm" / "model.safetensors"
    )


def test_the_placeholder_is_one_new_special_token(fun_asr_vllm_dir):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from asrctl.vllm_plugin.family import AUDIO_TOKEN

    section = json.loads((fun_asr_vllm_dir / "config.json").read_text())["asrctl"]
    original = Tokenizer.from_file(str(fun_asr_vllm_dir.parent / "llm" / "tokenizer.json"))
    assert original.token_to_id(AUDIO_TOKEN) is None
    hf = AutoTokenizer.from_pretrained(fun_asr_vllm_dir)
    text = f"语音转写：{AUDIO_TOKEN}<|im_end|>"
    ids = hf.encode(text, add_special_tokens=False)
    assert ids.count(section["audio_token_id"]) == 1
    assert section["audio_token_id"] not in original.encode("语音转写：<|im_end|>").ids


def test_setup_is_idempotent_and_leaves_the_model_folder_alone(fun_asr_copy):
    before = sorted(p.name for p in fun_asr_copy.iterdir())
    first = setup_model(fun_asr_copy)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert setup_model(fun_asr_copy) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # not rewritten
    assert sorted(p.name for p in fun_asr_copy.iterdir() if p.name != ".asrctl") == before
    assert not list(first.parent.glob("vllm.tmp-*"))


def test_a_killed_setups_temporary_folder_is_removed(fun_asr_copy):
    cache = setup_model(fun_asr_copy).parent
    old, fresh = cache / "vllm.tmp-killed", cache / "vllm.tmp-writing"
    for d in (old, fresh):
        d.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    setup_model(fun_asr_copy)
    assert not old.exists() and fresh.exists()  # a write in progress is left alone


def test_register_never_raises(monkeypatch, caplog):
    import asrctl.vllm_plugin as plugin

    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM not importable
    with caplog.at_level(logging.WARNING, logger="asrctl"):
        plugin.register()
    assert "not registered" in caplog.text


def test_importing_the_plugin_is_cheap():
    """vLLM imports it in every process: no torch, no vLLM, no transformers until used."""
    code = (
        "import sys, asrctl.vllm_plugin, asrctl.vllm_plugin.setup; "
        "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


def test_register_names_the_class_once():
    from vllm import ModelRegistry

    from asrctl.vllm_plugin import ARCH, register

    register()
    register()
    assert ARCH in ModelRegistry.get_supported_archs()


def test_the_entry_point_is_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points."vllm.general_plugins"]' in text
    assert 'asrctl = "asrctl.vllm_plugin:register"' in text


# -- the multimodal processor (vLLM's config and processor, no engine) ----------------------


@pytest.fixture(scope="module")
def processor(fun_asr_vllm_dir):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from asrctl.vllm_plugin import register

    register()
    config = ModelConfig(model=str(fun_asr_vllm_dir), max_model_len=1024, dtype="float32")
    return MULTIMODAL_REGISTRY.create_processor(config)


def _apply(processor, prompt, audio):
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    items = processor.info.parse_mm_data({"audio": audio})
    inputs = ProcessorInputs(prompt=prompt, mm_data_items=items)
    return processor.apply(inputs, TimingContext(enabled=False))


def _family_ids(model_dir: Path, vllm_dir: Path, options) -> tuple[list, list]:
    from tokenizers import Tokenizer

    from asrctl.adapters.registry import load_adapter

    tok = Tokenizer.from_file(str(vllm_dir / "tokenizer.json"))
    prompt = load_adapter(model_dir).prompt(options)
    return (
        tok.encode(prompt.prefix, add_special_tokens=False).ids,
        tok.encode(prompt.suffix, add_special_tokens=False).ids,
    )


def test_an_empty_prompt_gets_the_familys_own(processor, fun_asr_tiny, fun_asr_vllm_dir):
    from asrctl.adapters.base import PromptOptions
    from asrctl.adapters.registry import load_adapter

    audio = noise(1.5, seed=3)
    n = load_adapter(fun_asr_tiny).audio_positions(len(audio))
    audio_id = processor.info.plugin.audio_token_id
    prefix, suffix = _family_ids(fun_asr_tiny, fun_asr_vllm_dir, PromptOptions())
    for prompt in ([], ""):
        out = _apply(processor, prompt, audio)
        assert out["prompt_token_ids"] == [*prefix, *[audio_id] * n, *suffix]
        (where,) = out["mm_placeholders"]["audio"]
        assert (where.offset, where.length) == (len(prefix), n)


def test_text_without_the_placeholder_enters_the_familys_prompt(
    processor, fun_asr_tiny, fun_asr_vllm_dir
):
    """As asrctl's chat API: Fun-ASR-Nano takes a caller's text as hotwords."""
    from tokenizers import Tokenizer

    from asrctl.adapters.base import PromptOptions

    tok = Tokenizer.from_file(str(fun_asr_vllm_dir / "tokenizer.json"))
    audio = noise(1.0, seed=4)
    out = _apply(processor, tok.encode("阿里巴巴, 通义", add_special_tokens=False).ids, audio)
    options = PromptOptions(hotwords=("阿里巴巴", "通义"))
    prefix, suffix = _family_ids(fun_asr_tiny, fun_asr_vllm_dir, options)
    (where,) = out["mm_placeholders"]["audio"]
    ids = out["prompt_token_ids"]
    assert ids[: where.offset] == prefix and ids[where.offset + where.length :] == suffix
    assert prefix != _family_ids(fun_asr_tiny, fun_asr_vllm_dir, PromptOptions())[0]


def test_a_prompt_with_the_placeholder_is_used_as_written(processor, fun_asr_vllm_dir):
    from tokenizers import Tokenizer

    from asrctl.vllm_plugin.family import AUDIO_TOKEN

    tok = Tokenizer.from_file(str(fun_asr_vllm_dir / "tokenizer.json"))
    before, after = (tok.encode(t, add_special_tokens=False).ids for t in ("say ", " now"))
    ids = tok.encode(f"say {AUDIO_TOKEN} now", add_special_tokens=False).ids
    out = _apply(processor, ids, noise(0.8, seed=5))
    (where,) = out["mm_placeholders"]["audio"]
    assert out["prompt_token_ids"][: where.offset] == before
    assert out["prompt_token_ids"][where.offset + where.length :] == after


def test_every_audio_form_gives_asrctls_samples(processor, tmp_path):
    """A path, (samples, rate) at any rate, samples at the family's rate: resampled by
    asrctl's loader, so the model sees what asrctl's pipeline sees."""
    from asrctl.audio import load_audio

    low = noise(1.2, seed=6, sr=8000)
    path = tmp_path / "a.wav"
    sf.write(path, low, 8000, subtype="FLOAT")
    want = load_audio(str(path), sample_rate=16000)
    for form in (str(path), path, (low, 8000), want, (want, 16000)):
        (got,) = processor.info.parse_mm_data({"audio": form})["audio"].get_all()
        assert np.array_equal(np.asarray(got, dtype=np.float32), want), type(form)


def test_audio_longer_than_the_window_is_refused(processor):
    with pytest.raises(ValueError, match=r"audio of 31\.0 s is longer than Fun-ASR-Nano"):
        _apply(processor, [], noise(31.0, seed=7))


def test_profiling_uses_the_longest_audio_a_prompt_takes(processor):
    from asrctl.adapters.registry import load_adapter

    info = processor.info
    assert info.max_samples == 30 * 16000  # the family's window (fits 1,024 positions)
    (tokens,) = info.get_mm_max_tokens_per_item(1024, {"audio": 1}).values()
    adapter = load_adapter(info.plugin.model_dir)
    assert tokens == adapter.audio_positions(30 * 16000)


# -- /v1/audio/transcriptions hooks (classmethods vLLM's server calls) ---------------------


def test_transcription_hooks(processor, fun_asr_tiny, fun_asr_vllm_dir):
    from types import SimpleNamespace

    from asrctl.adapters.base import PromptOptions
    from asrctl.adapters.registry import load_adapter
    from asrctl.vllm_plugin.model import AsrctlAudioForConditionalGeneration as cls

    model_config = processor.info.ctx.model_config
    stt = cls.get_speech_to_text_config(model_config, "transcribe")
    assert (stt.sample_rate, stt.max_audio_clip_s) == (16000, 30)
    adapter = load_adapter(fun_asr_tiny)
    assert cls.get_num_audio_tokens(1.5, stt, model_config) == adapter.audio_positions(24000)

    audio = noise(1.5, seed=8)
    params = SimpleNamespace(
        audio=audio,
        stt_config=stt,
        model_config=model_config,
        language=None,
        hotwords=None,
        task_type="transcribe",
    )
    prompt = cls.get_generation_prompt(params)
    audio_id = processor.info.plugin.audio_token_id
    prefix, suffix = _family_ids(fun_asr_tiny, fun_asr_vllm_dir, PromptOptions())
    assert prompt["prompt_token_ids"] == [*prefix, audio_id, *suffix]
    assert prompt["multi_modal_data"]["audio"][1] == 16000

    hot = cls.get_generation_prompt(SimpleNamespace(**{**vars(params), "hotwords": "通义, 千问"}))
    hot_prefix, hot_suffix = _family_ids(
        fun_asr_tiny, fun_asr_vllm_dir, PromptOptions(hotwords=("通义", "千问"))
    )
    assert hot["prompt_token_ids"] == [*hot_prefix, audio_id, *hot_suffix]
    assert hot_prefix != prefix
    with pytest.raises(ValueError, match="do not translate"):
        cls.get_generation_prompt(SimpleNamespace(**{**vars(params), "task_type": "translate"}))
