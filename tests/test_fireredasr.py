"""FireRedASR-LLM: fixture layout, detection and checks, setup's config.json, the merged export,
and our Conformer encoder (no reference package, no vLLM: see test_fireredasr_parity.py)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from asrctl.adapters.base import PromptOptions
from asrctl.adapters.fireredasr_llm import (
    LORA_TARGETS,
    PREFIX,
    SUFFIX,
    FireRedAsrLlmAdapter,
    load_checkpoint,
    merge_lora,
)
from asrctl.adapters.registry import detect, load_adapter
from asrctl.errors import ModelDirError, OptionsError
from asrctl.export import prepare
from asrctl.fixtures import make_fixture
from asrctl.fixtures.fireredasr_llm import save_safetensors
from asrctl.models.conformer import ConformerConfig, FireRedAudio, subsampled_length
from asrctl.models.features import Cmvn
from asrctl.transcribe import TranscribeOptions

LLM = "Qwen2-7B-Instruct"
SCALE = 16 / 64  # FireRedASR's hard-coded LoRA alpha / r
SR = 16000

# FireRedASR-LLM-L model.pth.tar shapes (shared/reference/model-formats.md §1.3).
OFFICIAL_SHAPES = {
    "encoder.input_preprocessor.conv.0.weight": (32, 1, 3, 3),
    "encoder.input_preprocessor.conv.2.weight": (32, 32, 3, 3),
    "encoder.input_preprocessor.out.weight": (1280, 608),
    "encoder.positional_encoding.pe": (1, 9999, 1280),
    "encoder.layer_stack.15.ffn1.net.0.weight": (1280,),
    "encoder.layer_stack.15.ffn1.net.1.weight": (5120, 1280),
    "encoder.layer_stack.15.ffn2.net.4.weight": (1280, 5120),
    "encoder.layer_stack.15.mhsa.layer_norm_q.weight": (1280,),
    "encoder.layer_stack.15.mhsa.w_qs.weight": (1280, 1280),
    "encoder.layer_stack.15.mhsa.linear_pos.weight": (1280, 1280),
    "encoder.layer_stack.15.mhsa.fc.weight": (1280, 1280),
    "encoder.layer_stack.15.mhsa.pos_bias_u": (20, 64),
    "encoder.layer_stack.15.conv.pre_layer_norm.bias": (1280,),
    "encoder.layer_stack.15.conv.pointwise_conv1.weight": (5120, 1280, 1),
    "encoder.layer_stack.15.conv.depthwise_conv.weight": (2560, 1, 33),
    "encoder.layer_stack.15.conv.batch_norm.weight": (2560,),
    "encoder.layer_stack.15.conv.pointwise_conv2.weight": (1280, 2560, 1),
    "encoder.layer_stack.15.layer_norm.bias": (1280,),
    "encoder_projector.linear1.weight": (3584, 2560),
    "encoder_projector.linear2.weight": (3584, 3584),
}


@pytest.fixture(scope="module")
def firered_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny fixture (seed 0); tests that change files use ``firered_copy``."""
    return make_fixture("fireredasr-llm", tmp_path_factory.mktemp("fr") / "FireRedASR-LLM-L")


@pytest.fixture
def firered_copy(tmp_path: Path, firered_tiny: Path) -> Path:
    """A private copy: the model folder plus its sibling LLM folder, the link kept relative."""
    out = tmp_path / firered_tiny.name
    shutil.copytree(firered_tiny, out, symlinks=True, ignore=shutil.ignore_patterns(".asrctl"))
    sibling = firered_tiny.parent / f"{firered_tiny.name}-{LLM}"
    shutil.copytree(sibling, tmp_path / sibling.name)
    (out / "config.json").unlink(missing_ok=True)
    return out


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASRCTL_CACHE", raising=False)


def _noise(seconds: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((0.1 * rng.standard_normal(round(SR * seconds))).astype(np.float32))


# --- the fixture -------------------------------------------------------------------------


def test_fixture_layout(firered_tiny: Path) -> None:
    link = firered_tiny / LLM
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == (firered_tiny.parent / f"{firered_tiny.name}-{LLM}").resolve()
    assert (firered_tiny / "config.yaml").read_bytes() == b""
    llm_config = json.loads((link / "config.json").read_text())
    assert llm_config["architectures"] == ["Qwen2ForCausalLM"]
    assert llm_config["hidden_size"] // llm_config["num_attention_heads"] == 64
    assert (link / "model.safetensors").is_file()

    stats = kaldiio.load_mat(str(firered_tiny / "cmvn.ark"))
    assert stats.dtype == np.float64 and stats.shape == (2, 81) and stats[0, 80] >= 1

    enc = load_checkpoint(firered_tiny / "asr_encoder.pth.tar")
    assert set(enc) == {"args", "model_state_dict"} and isinstance(enc["args"], argparse.Namespace)
    assert {k.split(".")[0] for k in enc["model_state_dict"]} == {"encoder"}  # v1: the AED's
    pkg = load_checkpoint(firered_tiny / "model.pth.tar")
    assert isinstance(pkg["args"], argparse.Namespace)
    assert pkg["args"].use_lora and not pkg["args"].freeze_llm
    state = pkg["model_state_dict"]
    assert {k.split(".")[0] for k in state} == {"encoder", "encoder_projector", "llm"}
    lora = [k for k in state if k.startswith("llm.")]
    assert all(
        k.startswith("llm.base_model.model.model.layers.")
        and ".lora_" in k
        and k.endswith(".default.weight")
        for k in lora
    )
    assert len(lora) == llm_config["num_hidden_layers"] * len(LORA_TARGETS) * 2
    q_lora_a = "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert state[q_lora_a].shape[0] == 64
    assert state["encoder.positional_encoding.pe"].shape == (1, 9999, 64)


def test_fixture_tokenizer(firered_tiny: Path) -> None:
    """<speech> gets the next free id, inside the embedding table; "assistant" is one token."""
    tok = Tokenizer.from_file(str(firered_tiny / LLM / "tokenizer.json"))
    vocab = json.loads((firered_tiny / LLM / "config.json").read_text())["vocab_size"]
    assert tok.token_to_id("<speech>") is None
    assert tok.get_vocab_size(with_added_tokens=True) < vocab
    assert tok.token_to_id("assistant") is not None
    ids = [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]


def test_full_size_shapes_match_the_release() -> None:
    """Our modules at the released dimensions have the released keys and shapes."""
    with torch.device("meta"):
        model = FireRedAudio(ConformerConfig(), Cmvn(torch.zeros(80), torch.ones(80)), 3584)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 16 * 34 + 7 + 4  # per-layer tensors, subsampling + pe, projector
    for key, shape in OFFICIAL_SHAPES.items():
        assert shapes[key] == shape, key


# --- detection and checks -----------------------------------------------------------------


def test_detect_without_config_json(firered_copy: Path) -> None:
    adapter = load_adapter(firered_copy)
    assert isinstance(adapter, FireRedAsrLlmAdapter)
    assert adapter.family.name == "fireredasr-llm"


@pytest.mark.parametrize("with_config_json", [False, True])
def test_missing_file_named_with_its_content(firered_copy: Path, with_config_json: bool) -> None:
    (firered_copy / "cmvn.ark").unlink()
    if with_config_json:
        (firered_copy / "config.json").write_text(json.dumps({"model_type": "fireredasr"}))
    with pytest.raises(ModelDirError) as err:
        load_adapter(firered_copy)
    assert "missing required file: cmvn.ark — Kaldi CMVN statistics" in err.value.problems


def test_missing_encoder_file_is_still_detected_and_named(firered_copy: Path) -> None:
    (firered_copy / "asr_encoder.pth.tar").unlink()
    with pytest.raises(ModelDirError) as err:
        load_adapter(firered_copy)
    assert any(
        p.startswith("missing required file: asr_encoder.pth.tar") for p in err.value.problems
    )


def test_broken_llm_symlink_names_its_target(firered_copy: Path) -> None:
    shutil.rmtree(firered_copy.parent / f"{firered_copy.name}-{LLM}")
    with pytest.raises(ModelDirError) as err:
        load_adapter(firered_copy)
    first = err.value.problems[0]
    assert first.startswith(f"{LLM} is a broken symlink to ../{firered_copy.name}-{LLM}"), first


def test_unsafe_pickle_is_refused(firered_copy: Path) -> None:
    """Only tensors and argparse.Namespace may be unpickled: anything else is a problem."""
    pkg = load_checkpoint(firered_copy / "model.pth.tar", mmap=False)  # rewritten below
    pkg["args"] = _NotAllowed()
    torch.save(pkg, firered_copy / "model.pth.tar")
    problems = detect(firered_copy).check()
    assert problems == [
        "model.pth.tar: not a loadable FireRedASR checkpoint (it pickles "
        f"{_NotAllowed.__module__}._NotAllowed; asrctl unpickles only tensors and "
        "argparse.Namespace)"
    ]


class _NotAllowed:
    """A class torch.load(weights_only=True) must refuse to rebuild."""


def test_cmvn_dimension_mismatch(firered_copy: Path) -> None:
    kaldiio.save_mat(str(firered_copy / "cmvn.ark"), np.ones((2, 41)))
    assert detect(firered_copy).check() == ["cmvn.ark: 40 dims, the encoder expects 80"]


# --- setup: config.json and the merged export ----------------------------------------------


def test_setup_writes_config_json(firered_copy: Path) -> None:
    prepare(firered_copy)
    config = json.loads((firered_copy / "config.json").read_text())
    tok = Tokenizer.from_file(str(firered_copy / LLM / "tokenizer.json"))
    assert config["model_type"] == "fireredasr"
    assert config["architectures"] == ["FireRedAsrLlm"]
    assert config["encoder"] == {
        "type": "conformer",
        "idim": 80,
        "d_model": 64,
        "n_head": 4,
        "n_layers": 2,
        "kernel_size": 33,
        "subsampling": 4,
    }
    assert config["encoder_downsample_rate"] == 2
    assert config["speech_token"] == "<speech>"
    assert config["speech_token_id"] == tok.get_vocab_size(with_added_tokens=True)
    assert config["lora"]["applied"] and config["lora"]["r"] == 64
    # A second setup keeps the file as it is, and the folder is still detected.
    mtime = (firered_copy / "config.json").stat().st_mtime_ns
    assert prepare(firered_copy).reused
    assert (firered_copy / "config.json").stat().st_mtime_ns == mtime
    assert isinstance(load_adapter(firered_copy), FireRedAsrLlmAdapter)


def test_foreign_config_json_is_left_alone(firered_copy: Path) -> None:
    text = json.dumps({"model_type": "something_else"})
    (firered_copy / "config.json").write_text(text)
    prepare(firered_copy)
    assert (firered_copy / "config.json").read_text() == text


def _base_and_lora(model_dir: Path) -> tuple[dict, dict]:
    base = load_file(model_dir / LLM / "model.safetensors")
    state = load_checkpoint(model_dir / "model.pth.tar")["model_state_dict"]
    lora = {
        k.removeprefix("llm.base_model.model."): v for k, v in state.items() if k.startswith("llm.")
    }
    return base, lora


def test_export_merges_lora(firered_copy: Path) -> None:
    prepared = prepare(firered_copy)
    assert not prepared.reused and prepared.family == "fireredasr-llm"
    exported = load_file(prepared.llm_dir / "model.safetensors")
    base, lora = _base_and_lora(firered_copy)
    assert exported.keys() == base.keys()
    merged = 0
    for name, w in base.items():
        stem = name.removesuffix(".weight")
        if f"{stem}.lora_A.default.weight" in lora:
            a, b = lora[f"{stem}.lora_A.default.weight"], lora[f"{stem}.lora_B.default.weight"]
            expect = w + SCALE * (b @ a)
            assert torch.allclose(exported[name], expect, atol=1e-6, rtol=0), name
            assert not torch.allclose(exported[name], w, atol=1e-3), name  # LoRA matters
            merged += 1
        else:
            assert torch.equal(exported[name], w), name
    assert merged == 2 * len(LORA_TARGETS)
    config = json.loads((prepared.llm_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (prepared.llm_dir / "tokenizer.json").is_file()
    # Idempotent: a second setup reuses the export untouched.
    again = prepare(firered_copy)
    assert again.reused
    assert torch.equal(load_file(again.llm_dir / "model.safetensors")[name], exported[name])


def test_export_without_lora_when_args_freeze_the_llm(firered_copy: Path) -> None:
    """FireRedAsrLlm applies LoRA only when use_lora and not freeze_llm; so do we."""
    pkg = load_checkpoint(firered_copy / "model.pth.tar", mmap=False)  # rewritten below
    pkg["args"].freeze_llm = True
    torch.save(pkg, firered_copy / "model.pth.tar")
    exported = load_file(prepare(firered_copy).llm_dir / "model.safetensors")
    base, _ = _base_and_lora(firered_copy)
    assert all(torch.equal(exported[k], v) for k, v in base.items())


def test_export_from_sharded_llm_weights(firered_copy: Path, tmp_path: Path) -> None:
    """A Qwen2 folder with model-0000N-of-0000M shards and an index exports the same."""
    single = load_file(prepare(firered_copy).llm_dir / "model.safetensors")
    llm = firered_copy / LLM
    weights = load_file(llm / "model.safetensors")
    (llm / "model.safetensors").unlink()
    save_safetensors(weights, llm, shard_bytes=400_000)
    assert len(list(llm.glob("model-*-of-*.safetensors"))) > 1
    sharded = load_file(prepare(firered_copy).llm_dir / "model.safetensors")
    assert sharded.keys() == single.keys()
    assert all(torch.equal(sharded[k], single[k]) for k in single)


def test_merge_lora_keeps_dtype() -> None:
    w = torch.randn(6, 4, dtype=torch.bfloat16)
    a, b = torch.randn(2, 4), torch.randn(6, 2)
    out = merge_lora(w, a, b, 0.25)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (w.float() + 0.25 * b @ a).bfloat16())


# --- prompt and decoding defaults ---------------------------------------------------------


def test_prompt_and_defaults(firered_tiny: Path) -> None:
    adapter = detect(firered_tiny)
    prompt = adapter.prompt(PromptOptions())
    assert (prompt.prefix, prompt.suffix) == (PREFIX, SUFFIX)
    assert prompt.prefix + "<speech>" + prompt.suffix == (
        "<|im_start|>user\n<speech>请转写音频为文字<|im_end|>\n<|im_start|>assistant\n"
    )
    assert adapter.prompt(PromptOptions(language="auto")) == prompt
    with pytest.raises(OptionsError):
        adapter.prompt(PromptOptions(hotwords=("asrctl",)))
    with pytest.raises(OptionsError):
        adapter.prompt(PromptOptions(language="zh"))
    assert adapter.family.max_audio_seconds == 30.0
    assert adapter.family.repetition_penalty == 3.0
    assert adapter.max_new_tokens(37) == 37
    assert adapter.postprocess("  你好 world \n") == "你好 world"


@pytest.mark.parametrize("penalty", [0.0, -1.0])
def test_repetition_penalty_must_be_positive(penalty: float) -> None:
    with pytest.raises(OptionsError):
        TranscribeOptions(repetition_penalty=penalty)


# --- our encoder ----------------------------------------------------------------------------


def test_token_count_formula() -> None:
    """vLLM's FireRed formula (((T+6-3)//2+1-3)//2+1)//2: about 12.5 audio tokens per second."""
    for frames in (1, 7, 8, 9, 10, 11, 98, 2998):
        assert subsampled_length(frames) // 2 == (((frames + 6 - 3) // 2 + 1 - 3) // 2 + 1) // 2
    assert subsampled_length(998) // 2 == 125  # 10 s of audio: 998 fbank frames


def test_padded_batch_equals_each_utterance_alone(firered_tiny: Path) -> None:
    encoder = detect(firered_tiny).audio_encoder("cpu", torch.float32)
    waves = [_noise(s, i) for i, s in enumerate((1.37, 0.41, 2.05, 0.93))]
    with torch.inference_mode():
        batched = encoder(waves)
        alone = [encoder([w])[0] for w in waves]
    for i, (b, a) in enumerate(zip(batched, alone, strict=True)):
        assert b.shape == a.shape == (subsampled_length((len(waves[i]) - 400) // 160 + 1) // 2, 128)
        diff = float((b - a).abs().max())
        assert diff < 1e-5, f"utterance {i}: batched vs alone max abs diff {diff:.3g}"


def test_audio_positions_equal_encoder_output(firered_tiny: Path) -> None:
    adapter = detect(firered_tiny)
    encoder = adapter.audio_encoder("cpu", torch.float32)
    waves = [_noise(s, i) for i, s in enumerate((0.41, 1.37, 9.99, 30.0))]
    with torch.inference_mode():
        out = encoder(waves)
    assert [adapter.audio_positions(len(w)) for w in waves] == [len(o) for o in out]
    assert adapter.audio_positions(SR * 10) == 125  # 80 ms per audio token
