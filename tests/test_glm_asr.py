"""GLM-ASR-Nano: fixture layout, detection and checks, the older layout refused, setup's
LlamaForCausalLM export, the Whisper log-mel front end against transformers'
WhisperFeatureExtractor, 30 s windowing and the token count against GlmAsrProcessor, and the
prompt against the processor's chat template (no vLLM: see test_glm_asr_parity.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
from clirun import run_asrctl
from speechlike import noise

from asrctl.adapters.base import PromptOptions
from asrctl.adapters.glm_asr import GlmAsrAdapter
from asrctl.adapters.registry import detect, load_adapter
from asrctl.errors import ModelDirError, OptionsError
from asrctl.export import prepare
from asrctl.fixtures import GENERATORS, make_fixture
from asrctl.models.glm_asr import (
    WhisperFeatureOptions,
    glm_asr_token_count,
    log_mel,
    mel_filters,
    split_windows,
)

SR = 16000
# Fixture-written files, as in zai-org/GLM-ASR-Nano-2512 (model-formats §3.1).
FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "preprocessor_config.json",
)
FEAT_ATOL_NUMPY = 1e-4  # transformers' numpy STFT path vs our torch one (measured below)


@pytest.fixture(scope="module")
def glm_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fixture("glm-asr-nano", tmp_path_factory.mktemp("glm") / "GLM-ASR-Nano-2512")


@pytest.fixture
def glm_copy(tmp_path: Path, glm_tiny: Path) -> Path:
    return Path(
        shutil.copytree(glm_tiny, tmp_path / "GLM", ignore=shutil.ignore_patterns(".asrctl"))
    )


@pytest.fixture(scope="module")
def processor(glm_tiny: Path):
    from transformers import AutoTokenizer, GlmAsrProcessor, WhisperFeatureExtractor

    return GlmAsrProcessor(
        WhisperFeatureExtractor.from_pretrained(glm_tiny),
        AutoTokenizer.from_pretrained(glm_tiny),
        chat_template=(glm_tiny / "chat_template.jinja").read_text(),
    )


# --- layout, detection, checks ------------------------------------------------------------


def test_fixture_layout(glm_tiny: Path) -> None:
    assert sorted(p.name for p in glm_tiny.iterdir()) == sorted(FILES)
    config = json.loads((glm_tiny / "config.json").read_text())
    assert config["model_type"] == "glmasr"
    assert config["architectures"] == ["GlmAsrForConditionalGeneration"]
    with safe_open(str(glm_tiny / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        prefixes = {k.split(".")[0] for k in keys}
        assert prefixes == {"audio_tower", "multi_modal_projector", "language_model"}
        assert "audio_tower.layers.0.self_attn.k_proj.bias" not in keys  # k_proj has no bias
        assert "language_model.lm_head.weight" not in keys  # tied
        # the projector takes 4 merged frames = audio intermediate_size
        assert (
            f.get_slice("multi_modal_projector.linear_1.weight").get_shape()[1]
            == (4 * config["audio_config"]["hidden_size"])
            == config["audio_config"]["intermediate_size"]
        )
    pre = json.loads((glm_tiny / "preprocessor_config.json").read_text())
    assert pre["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert pre["feature_size"] == 128


def test_transformers_loads_fixture_strictly(glm_tiny: Path) -> None:
    """transformers' own model finds every tensor it needs and no stray ones."""
    from transformers import GlmAsrForConditionalGeneration

    model, info = GlmAsrForConditionalGeneration.from_pretrained(
        glm_tiny, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.lm_head.weight.data_ptr() == (
        model.model.language_model.embed_tokens.weight.data_ptr()
    )


def test_detect(glm_tiny: Path) -> None:
    adapter = load_adapter(glm_tiny)
    assert isinstance(adapter, GlmAsrAdapter)
    assert adapter.family.name == "glm-asr-nano"
    assert adapter.family.max_audio_seconds == 655


@pytest.mark.parametrize("family", sorted(set(GENERATORS) - {"glm-asr-nano"}))
def test_detection_does_not_misfire(family: str, tmp_path: Path) -> None:
    """No other family's fixture is taken for GLM-ASR, and each is still detected as itself."""
    other = make_fixture(family, tmp_path / family / "model")
    prepare(other)  # setup may write a config.json of its own (FireRedASR does)
    assert not GlmAsrAdapter.matches(other)
    assert detect(other).family.name != "glm-asr-nano"


def test_plain_llm_is_not_glm(tmp_path: Path) -> None:
    qwen = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
    (tmp_path / "config.json").write_text(json.dumps(qwen))
    assert not GlmAsrAdapter.matches(tmp_path)


def test_missing_file_named(glm_copy: Path) -> None:
    (glm_copy / "preprocessor_config.json").unlink()
    with pytest.raises(ModelDirError) as e:
        load_adapter(glm_copy)
    assert "missing preprocessor_config.json (or processor_config.json" in str(e.value)
    assert len(e.value.problems) == 1


def test_mel_bins_mismatch(glm_copy: Path) -> None:
    pre = json.loads((glm_copy / "preprocessor_config.json").read_text())
    (glm_copy / "preprocessor_config.json").write_text(json.dumps({**pre, "feature_size": 80}))
    with pytest.raises(ModelDirError) as e:
        load_adapter(glm_copy)
    assert "feature_size 80" in str(e.value)


def test_audio_token_id_checked(glm_copy: Path) -> None:
    config = json.loads((glm_copy / "config.json").read_text())
    (glm_copy / "config.json").write_text(json.dumps({**config, "audio_token_id": 3}))
    with pytest.raises(ModelDirError) as e:
        load_adapter(glm_copy)
    assert "audio_token_id 3" in str(e.value)


@pytest.mark.parametrize(
    "legacy",
    [
        {  # the remote-code release's config.json (before 2025-12-27)
            "architectures": ["GlmasrModel"],
            "auto_map": {
                "AutoConfig": "configuration_glmasr.GlmasrConfig",
                "AutoModelForCausalLM": "modeling_glmasr.GlmasrModel",
            },
            "merge_factor": 4,
            "model_type": "Glmasr",
        },
        {"auto_map": {"AutoModelForCausalLM": "modeling_glmasr.GlmAsrModel"}, "model_type": "glm"},
    ],
)
def test_legacy_layout_explains_conversion(tmp_path: Path, legacy: dict) -> None:
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert isinstance(detect(tmp_path), GlmAsrAdapter)
    with pytest.raises(ModelDirError) as e:
        load_adapter(tmp_path)
    message = str(e.value)
    assert "remote-code" in message and "convert_glmasr_weights_to_hf.py" in message
    assert "zai-org/GLM-ASR-Nano-2512" in message


# --- setup: the exported LLM ------------------------------------------------------------------


def test_setup_exports_llama(glm_copy: Path) -> None:
    from transformers import LlamaForCausalLM

    prepared = prepare(glm_copy)
    assert prepared.family == "glm-asr-nano"
    llm = prepared.llm_dir
    config = json.loads((llm / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert config["head_dim"] == 64  # vLLM's CPU attention needs it
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (llm / name).is_file(), name
    with safe_open(str(llm / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    with safe_open(str(glm_copy / "model.safetensors"), framework="pt") as f:
        src = {k[len("language_model.") :] for k in f.keys() if k.startswith("language_model.")}
        embed = f.get_tensor("language_model.model.embed_tokens.weight")
    assert keys == src and all(k.startswith("model.") for k in keys)
    model = LlamaForCausalLM.from_pretrained(llm, dtype=torch.float32)
    assert torch.equal(model.lm_head.weight, embed)  # tied
    assert prepare(glm_copy).reused


# --- front end -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [1, 159, 160, 16000 * 3 + 37, 16000 * 30])
def test_log_mel_matches_whisper_feature_extractor(processor, n_samples: int) -> None:
    """Our batched torch log-mel and mask equal WhisperFeatureExtractor's (torch and numpy)."""
    fe = processor.feature_extractor
    wave = noise(n_samples / SR, n_samples)
    other = noise(7.3, 1)  # batched with a different utterance: per-window normalisation
    ref = fe([wave, other], sampling_rate=SR, return_attention_mask=True, return_tensors="pt")
    opts = WhisperFeatureOptions.from_config(fe.to_dict())
    filters = torch.from_numpy(mel_filters(400, 128, SR)).float()
    batch = torch.zeros(2, opts.window_samples)
    batch[0, :n_samples], batch[1, : len(other)] = torch.from_numpy(wave), torch.from_numpy(other)
    ours = log_mel(batch, opts, filters)
    diff = float((ours - ref["input_features"]).abs().max())
    assert diff < 1e-5, f"torch path: max abs diff {diff:.3g}"
    ref_np = fe._np_extract_fbank_features(batch.numpy(), "cpu")
    diff_np = float((ours - torch.from_numpy(ref_np)).abs().max())
    assert diff_np < FEAT_ATOL_NUMPY, f"numpy path: max abs diff {diff_np:.3g}"
    assert int(ref["attention_mask"][0].sum()) == -(-n_samples // 160)
    assert np.abs(mel_filters(400, 128, SR) - fe.mel_filters).max() < 1e-12


@pytest.mark.parametrize("seconds", [0.01, 1.0, 29.99, 30.0, 30.01, 61.5, 629.0, 650.0])
def test_windows_and_token_count_match_processor(processor, seconds: float) -> None:
    """Our windows, masks and token count equal GlmAsrProcessor's for one utterance."""
    n = round(seconds * SR)
    window = 30 * SR
    spans = split_windows(n, window, max_windows=655 // 30)
    inputs = processor(
        text=[processor.audio_token], audio=[np.zeros(n, np.float32)], return_tensors="pt"
    )
    frames = inputs["input_features_mask"].sum(-1).tolist()
    assert [-(-(e - s) // 160) for s, e in spans] == frames
    assert sum(glm_asr_token_count(f) for f in frames) == int(
        (inputs["input_ids"] == processor.audio_token_id).sum()
    )
    if seconds > 630:
        assert spans[-1][1] == 630 * SR  # the processor keeps 21 windows


def test_token_count_formula() -> None:
    assert glm_asr_token_count(3000) == 375  # one full window
    assert [glm_asr_token_count(n) for n in (1, 8, 9, 15, 100)] == [0, 1, 1, 2, 12]


# --- prompt --------------------------------------------------------------------------------


def test_prompt_equals_processor_chat_template(glm_tiny: Path, processor) -> None:
    adapter = load_adapter(glm_tiny)
    prompt = adapter.prompt(PromptOptions())
    assert prompt.prefix.endswith("<|begin_of_audio|>")
    assert prompt.suffix.startswith("<|end_of_audio|>")
    assert prompt.suffix.endswith("<|assistant|>\n")
    audio = noise(2.0, 0)
    inputs = processor.apply_transcription_request(audio)
    tok = processor.tokenizer
    n = glm_asr_token_count(-(-len(audio) // 160))
    ids = (
        tok(prompt.prefix, add_special_tokens=False).input_ids
        + [processor.audio_token_id] * n
        + tok(prompt.suffix, add_special_tokens=False).input_ids
    )
    assert ids == inputs["input_ids"][0].tolist()


def test_unsupported_options(glm_tiny: Path) -> None:
    adapter = load_adapter(glm_tiny)
    with pytest.raises(OptionsError):
        adapter.prompt(PromptOptions(hotwords=("x",)))
    with pytest.raises(OptionsError):
        adapter.prompt(PromptOptions(language="zh"))
    assert adapter.prompt(PromptOptions(language="auto")) == adapter.prompt(PromptOptions())


def test_cli_setup(glm_copy: Path) -> None:
    proc = run_asrctl("setup", str(glm_copy))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "family\tglm-asr-nano"
    assert (glm_copy / ".asrctl" / "llm" / "model.safetensors").is_file()


def test_cli_setup_legacy_layout(tmp_path: Path) -> None:
    legacy = {
        "auto_map": {"AutoModelForCausalLM": "modeling_glmasr.GlmasrModel"},
        "merge_factor": 4,
    }
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    proc = run_asrctl("setup", str(tmp_path))
    assert proc.returncode == 3, proc.stderr
    assert "convert_glmasr_weights_to_hf.py" in proc.stderr and "Traceback" not in proc.stderr


# GLM-ASR-Nano-2512's model.safetensors shapes (shared/reference/model-formats.md §3.2).
OFFICIAL_SHAPES = {
    "audio_tower.conv1.weight": (1280, 128, 3),
    "audio_tower.conv2.weight": (1280, 1280, 3),
    "audio_tower.layers.31.self_attn.q_proj.weight": (1280, 1280),
    "audio_tower.layers.31.self_attn.k_proj.weight": (1280, 1280),
    "audio_tower.layers.31.mlp.fc1.weight": (5120, 1280),
    "audio_tower.layers.31.mlp.fc2.weight": (1280, 5120),
    "audio_tower.norm.weight": (1280,),
    "multi_modal_projector.linear_1.weight": (4096, 5120),
    "multi_modal_projector.linear_2.weight": (2048, 4096),
    "language_model.model.embed_tokens.weight": (59264, 2048),
    "language_model.model.layers.27.self_attn.q_proj.weight": (2048, 2048),
    "language_model.model.layers.27.self_attn.k_proj.weight": (512, 2048),
    "language_model.model.layers.27.mlp.gate_proj.weight": (6144, 2048),
    "language_model.model.layers.27.mlp.down_proj.weight": (2048, 6144),
    "language_model.model.norm.weight": (2048,),
}


def test_full_size_official_shapes() -> None:
    from asrctl.fixtures.glm_asr import SIZES, audio_shapes, llama_shapes

    a, m = SIZES["full"]["audio"], SIZES["full"]["llm"]
    shapes = {
        **audio_shapes(a["hidden"], a["intermediate"], a["layers"]),
        **llama_shapes(
            m["vocab"], m["hidden"], m["intermediate"], m["layers"], m["heads"], m["kv_heads"]
        ),
        "multi_modal_projector.linear_1.weight": (2 * m["hidden"], a["intermediate"]),
        "multi_modal_projector.linear_2.weight": (m["hidden"], 2 * m["hidden"]),
    }
    assert {k: shapes[k] for k in OFFICIAL_SHAPES} == OFFICIAL_SHAPES
    assert "audio_tower.layers.31.self_attn.k_proj.bias" not in shapes
    assert "audio_tower.layers.32.mlp.fc1.weight" not in shapes


def test_audio_positions_equal_encoder_output(glm_tiny: Path) -> None:
    """Within one window, across windows, and past 655 s (the encoder truncates)."""
    adapter = detect(glm_tiny)
    encoder = adapter.audio_encoder("cpu", torch.float32)
    waves = [torch.from_numpy(noise(s, i)) for i, s in enumerate((0.5, 7.3, 30.0, 41.7, 700.0))]
    with torch.inference_mode():
        out = encoder(waves)
    assert [adapter.audio_positions(len(w)) for w in waves] == [len(o) for o in out]
    assert adapter.audio_positions(SR * 700) == adapter.audio_positions(SR * 630)
