"""GLM-ASR-Nano whole pipeline against the original's whole pipeline (fp32, CPU).

The checkpoint is written by the original class: transformers'
``GlmAsrForConditionalGeneration.save_pretrained`` (its ``language_model.model.model.*``
layout) plus ``GlmAsrProcessor.save_pretrained``; a copy is rewritten into the release key
layout. The original pipeline is the model card's: ``processor.apply_transcription_request``
then ``model.generate(do_sample=False)`` and ``batch_decode(skip_special_tokens=True)``.
asrctl runs as a user does: ``asrctl setup`` then ``asrctl transcribe`` on wav files with
default decoding settings (``--raw-text``, so the text is compared as decoded). One vLLM
engine for the module (the transcribe run).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from parity import asrctl_texts, assert_audio_dependent, assert_same_text, chirp_wavs
from safetensors.torch import load_file, save_file

from asrctl.adapters.registry import load_adapter
from asrctl.export import export_llm
from asrctl.fixtures import make_fixture

transformers = pytest.importorskip("transformers")
SR = 16000
DURATIONS = (0.8, 2.6, 4.1)
MAX_NEW_TOKENS = 512  # asrctl's default cap (the reference's own is the caller's choice)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory):
    """(saved folder, processor, model): weights of the seeded fixture, written by transformers."""
    from transformers import (
        AutoTokenizer,
        GlmAsrForConditionalGeneration,
        GlmAsrProcessor,
        WhisperFeatureExtractor,
    )

    root = tmp_path_factory.mktemp("glm-original")
    src = make_fixture("glm-asr-nano", root / "fixture")
    processor = GlmAsrProcessor(
        WhisperFeatureExtractor.from_pretrained(src),
        AutoTokenizer.from_pretrained(src),
        chat_template=(src / "chat_template.jinja").read_text(),
    )
    loaded = GlmAsrForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    # built from a config (not loaded), as a trained or converted model is: save_pretrained
    # then writes transformers' doubled prefix, language_model.model.model.*
    model = GlmAsrForConditionalGeneration(loaded.config).eval()
    model.load_state_dict(loaded.state_dict())
    out = root / "saved"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if not (out / "chat_template.jinja").is_file():  # older processors embed it in JSON
        (out / "chat_template.jinja").write_text(processor.chat_template)
    return out, processor, model


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("glm-wav")
    return chirp_wavs(folder, DURATIONS, SR, seed=20, base_hz=180, step_hz=230, sweep=0.1)


def _release_copy(saved: Path, dst: Path) -> Path:
    out = Path(shutil.copytree(saved, dst))
    state = {}
    for f in sorted(out.glob("*.safetensors")):
        state |= load_file(f)
        f.unlink()
    index = out / "model.safetensors.index.json"
    if index.exists():
        index.unlink()
    renamed = {
        re.sub(r"^language_model\.model\.model\.", "language_model.model.", k): v
        for k, v in state.items()
    }
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_saved_and_release_layouts_give_one_export(original, tmp_path: Path) -> None:
    saved, _, model = original
    keys = load_file(next(saved.glob("*.safetensors"))).keys()
    assert any(k.startswith("language_model.model.model.layers.") for k in keys)
    assert json.loads((saved / "config.json").read_text())["dtype"] == "float32"
    exports = []
    for folder in (
        Path(shutil.copytree(saved, tmp_path / "saved")),
        _release_copy(saved, tmp_path / "release"),
    ):
        adapter = load_adapter(folder)
        exports.append(load_file(export_llm(adapter).llm_dir / "model.safetensors"))
        config = json.loads((adapter.model_dir / ".asrctl/llm/config.json").read_text())
        assert config["dtype"] == config["torch_dtype"] == "float32"
    assert exports[0].keys() == exports[1].keys()
    assert all(torch.equal(exports[0][k], exports[1][k]) for k in exports[0])
    memory = model.state_dict()
    assert torch.equal(
        exports[0]["model.layers.0.mlp.up_proj.weight"],
        memory["model.language_model.layers.0.mlp.up_proj.weight"],
    )


@torch.no_grad()
def _original_text(processor, model, wav: Path) -> str:
    audio, sr = sf.read(wav, dtype="float32")
    assert sr == SR
    inputs = processor.apply_transcription_request(audio)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    new = out[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new, skip_special_tokens=True)[0]


@pytest.mark.vllm
def test_asrctl_transcribe_equals_the_original_pipeline(original, wavs, tmp_path: Path) -> None:
    saved, processor, model = original
    model_dir = Path(shutil.copytree(saved, tmp_path / "GLM-ASR-Nano"))
    texts = asrctl_texts(model_dir, wavs, tmp_path / "out", setup=True)
    for wav, text in zip(wavs, texts, strict=True):
        assert_same_text(wav.name, text, _original_text(processor, model, wav))
    assert_audio_dependent(texts)
