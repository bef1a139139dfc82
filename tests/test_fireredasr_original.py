"""FireRedASR-LLM (v1) whole pipeline against the original's whole pipeline (fp32, CPU).

The checkpoint is written by the original class: ``FireRedAsrLlm.from_args`` (encoder from
the AED ``asr_encoder.pth.tar``, Qwen2 wrapped by PEFT LoRA), its LoRA adapters given
trained-like values, then saved as FireRedASR ships it: ``model.pth.tar`` =
``{"model_state_dict": encoder.*, encoder_projector.*, the LoRA tensors, "args": Namespace}``.
The original pipeline is ``FireRedAsr.from_pretrained("llm").transcribe`` of fireredasr
0.0.2 (``modelscope.snapshot_download`` answered with the local folder; transformers 5's
``apply_chat_template`` given ``return_dict=False``), at repetition penalty 3.0 — the
README's setting and asrctl's default for the family (the function's own default is 1.0).
asrctl runs as a user does: ``asrctl setup`` and ``asrctl transcribe`` with default decoding
settings (``--raw-text``). One vLLM engine for the module.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from parity import asrctl_texts, assert_audio_dependent, assert_same_text, chirp_wavs

from asrctl.adapters.fireredasr_llm import LLM_DIR, load_checkpoint
from asrctl.adapters.registry import load_adapter
from asrctl.fixtures import make_fixture

SR = 16000
DURATIONS = (0.6, 1.4, 2.5)
PENALTY = 3.0


def _reference(model_dir: Path) -> types.SimpleNamespace:
    if importlib.util.find_spec("fireredasr") is None or importlib.util.find_spec("peft") is None:
        pytest.skip("needs pip install --no-deps fireredasr==0.0.2 peft==0.21.2 accelerate")
    had = sys.modules.get("modelscope")
    sys.modules["modelscope"] = types.SimpleNamespace(snapshot_download=lambda name: str(model_dir))
    try:
        from fireredasr.models import fireredasr
        from fireredasr.models.fireredasr_llm import FireRedAsrLlm
    finally:
        if had is None:
            del sys.modules["modelscope"]
    # another test module may have imported it first, with its own stub: answer here too
    fireredasr.snapshot_download = lambda name: str(model_dir)
    return types.SimpleNamespace(module=fireredasr, Llm=FireRedAsrLlm)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FireRedASR-LLM-L folder whose model.pth.tar the original class wrote."""
    root = tmp_path_factory.mktemp("fr-original")
    src = make_fixture("fireredasr-llm", root / "src")  # AED args + weights, Qwen2, cmvn
    out = root / "FireRedASR-LLM-L"
    out.mkdir()
    for name in ("asr_encoder.pth.tar", "cmvn.ark", "config.yaml"):
        shutil.copy(src / name, out / name)
    os.symlink(os.readlink(src / LLM_DIR), out / LLM_DIR)  # the README's ln -s
    ref = _reference(out)
    args = load_checkpoint(src / "model.pth.tar")["args"]
    args.encoder_path, args.llm_dir = str(out / "asr_encoder.pth.tar"), str(out / LLM_DIR)
    with torch.serialization.safe_globals([argparse.Namespace]):
        model = ref.Llm.from_args(args)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # PEFT starts B at zero: give the adapters trained values
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    state = {
        k: v for k, v in model.state_dict().items() if not k.startswith("llm.") or ".lora_" in k
    }
    torch.save({"model_state_dict": state, "args": args}, out / "model.pth.tar")
    return out


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fr-wav")
    return chirp_wavs(folder, DURATIONS, SR, seed=30, base_hz=160, step_hz=210, sweep=1.0)


def test_the_original_checkpoint_is_read(original: Path) -> None:
    state = load_checkpoint(original / "model.pth.tar")["model_state_dict"]
    assert {k.split(".")[0] for k in state} == {"encoder", "encoder_projector", "llm"}
    adapter = load_adapter(original)
    assert adapter.version == 1 and adapter.lora_applied
    assert len(adapter.llm_overrides()[1]) == sum(".lora_A." in k for k in state)


@pytest.mark.vllm
def test_asrctl_transcribe_equals_the_original_pipeline(original, wavs, tmp_path) -> None:
    ours = asrctl_texts(original, wavs, tmp_path / "out", setup=True)

    ref = _reference(original)
    with torch.serialization.safe_globals([argparse.Namespace]):
        asr = ref.module.FireRedAsr.from_pretrained("llm")
    asr.tokenizer.apply_chat_template = functools.partial(
        asr.tokenizer.apply_chat_template, return_dict=False
    )
    from fireredasr.tokenizer.llm_tokenizer import LlmTokenizerWrapper

    stops = {asr.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    for wav, text in zip(wavs, ours, strict=True):
        [result] = asr.transcribe(["u"], [str(wav)], {"repetition_penalty": PENALTY})
        # the same decode, token by token: the original stops at <|im_end|> only, asrctl
        # (vLLM) at Qwen2's other eos <|endoftext|> too, so compare up to the first stop
        feats, lengths, _ = asr.feat_extractor([str(wav)])
        ids, mask, _, _ = LlmTokenizerWrapper.preprocess_texts(
            [""], asr.tokenizer, max_len=128, decode=True
        )
        with torch.no_grad():
            tokens = asr.model.transcribe(feats, lengths, ids, mask, 1, 0, 0, PENALTY, 0.0, 1.0)
        tokens = tokens[0].tolist()
        first = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
        expected = asr.tokenizer.decode(tokens[: first + 1], skip_special_tokens=True)
        assert result["text"].startswith(expected)  # the whole pipeline's own text
        assert_same_text(wav.name, text, expected)
    assert_audio_dependent(ours)
