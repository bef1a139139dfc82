"""The Fun-ASR-Nano fixture generator writes the official on-disk layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer

from asrctl.fixtures import make_fixture
from asrctl.fixtures._weights import QwenDims, qwen_shapes
from asrctl.fixtures.fun_asr_nano import SIZES, adaptor_shapes, encoder_shapes
from asrctl.fixtures.tokenizer import QWEN3_EXTRA_TOKENS, QWEN_SPECIAL_TOKENS

LLM = "Qwen3-0.6B"
PREFIXES = ("audio_encoder.", "audio_adaptor.", "llm.")
QWEN_IDS = range(151643, 151669)  # Qwen's own special-token ids, never valid in a fixture

# Fun-ASR-Nano-2512 model.pt tensor shapes (shared/reference/model-formats.md §2.2).
OFFICIAL_SHAPES = {
    "audio_encoder.encoders0.0.self_attn.linear_q_k_v.weight": (1536, 560),
    "audio_encoder.encoders0.0.self_attn.linear_q_k_v.bias": (1536,),
    "audio_encoder.encoders0.0.self_attn.fsmn_block.weight": (512, 1, 11),
    "audio_encoder.encoders0.0.self_attn.linear_out.weight": (512, 512),
    "audio_encoder.encoders0.0.feed_forward.w_1.weight": (2048, 512),
    "audio_encoder.encoders0.0.feed_forward.w_2.weight": (512, 2048),
    "audio_encoder.encoders0.0.norm1.weight": (560,),
    "audio_encoder.encoders0.0.norm2.weight": (512,),
    "audio_encoder.encoders.48.self_attn.linear_q_k_v.weight": (1536, 512),
    "audio_encoder.encoders.48.norm1.bias": (512,),
    "audio_encoder.tp_encoders.19.self_attn.fsmn_block.weight": (512, 1, 11),
    "audio_encoder.after_norm.weight": (512,),
    "audio_encoder.tp_norm.bias": (512,),
    "audio_adaptor.linear1.weight": (2048, 512),
    "audio_adaptor.linear2.weight": (1024, 2048),
    "audio_adaptor.blocks.1.self_attn.linear_v.weight": (1024, 1024),
    "audio_adaptor.blocks.0.feed_forward.w_1.weight": (256, 1024),
    "audio_adaptor.blocks.0.feed_forward.w_2.weight": (1024, 256),
    "audio_adaptor.blocks.1.norm2.weight": (1024,),
    "llm.model.embed_tokens.weight": (151936, 1024),
    "llm.lm_head.weight": (151936, 1024),
    "llm.model.layers.27.self_attn.q_proj.weight": (2048, 1024),
    "llm.model.layers.0.self_attn.k_proj.weight": (1024, 1024),
    "llm.model.layers.0.self_attn.o_proj.weight": (1024, 2048),
    "llm.model.layers.0.self_attn.q_norm.weight": (128,),
    "llm.model.layers.0.mlp.gate_proj.weight": (3072, 1024),
    "llm.model.layers.0.mlp.down_proj.weight": (1024, 3072),
}
ABSENT_FULL_KEYS = (
    "audio_encoder.encoders.49.norm1.weight",
    "audio_encoder.tp_encoders.20.norm1.weight",
    "audio_adaptor.blocks.2.norm1.weight",
    "llm.model.layers.28.input_layernorm.weight",
)


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(obj, dict) and list(obj) == ["state_dict"]
    return obj["state_dict"]


@pytest.fixture(scope="module")
def state(fun_asr_tiny: Path) -> dict[str, torch.Tensor]:
    return _state(fun_asr_tiny)


@pytest.fixture(scope="module")
def full_shapes() -> dict[str, tuple[int, ...]]:
    full = SIZES["full"]
    llm = QwenDims(**full["llm"], qk_norm=True, tie_embeddings=True)
    return {
        **encoder_shapes(full["encoder"]),
        **adaptor_shapes(full["adaptor"]),
        **qwen_shapes(llm, prefix="llm."),
    }


def test_directory_layout(fun_asr_tiny: Path) -> None:
    # .asrctl/ is the export cache other tests' `asrctl setup` runs may have written
    assert sorted(p.name for p in fun_asr_tiny.iterdir() if p.name != ".asrctl") == [
        LLM,
        "config.yaml",
        "configuration.json",
        "model.pt",
    ]
    assert sorted(p.name for p in (fun_asr_tiny / LLM).iterdir()) == [
        "config.json",
        "generation_config.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]  # no weights: the LLM is loaded from model.pt


def test_model_pt_keys_and_dtype(state: dict[str, torch.Tensor]) -> None:
    assert [k for k in state if not k.startswith(PREFIXES)] == []
    for prefix in PREFIXES:
        assert any(k.startswith(prefix) for k in state), prefix
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    lm_head, embed = state["llm.lm_head.weight"], state["llm.model.embed_tokens.weight"]
    assert torch.equal(lm_head, embed)
    assert lm_head.abs().sum() > 0


def test_config_yaml(fun_asr_tiny: Path, state: dict[str, torch.Tensor]) -> None:
    conf = yaml.safe_load((fun_asr_tiny / "config.yaml").read_text())
    assert conf["model"] == "FunASRNano"
    assert conf["audio_encoder"] == "SenseVoiceEncoderSmall"
    assert conf["audio_adaptor"] == "Transformer"
    front = conf["frontend_conf"]
    assert (front["lfr_m"], front["lfr_n"], front["n_mels"]) == (7, 6, 80)
    assert (front["window"], front["cmvn_file"]) == ("hamming", None)
    enc, adp = conf["audio_encoder_conf"], conf["audio_adaptor_conf"]
    assert state["audio_encoder.after_norm.weight"].shape == (enc["output_size"],)
    n_blocks = {k.split(".")[2] for k in state if k.startswith("audio_encoder.encoders.")}
    assert len(n_blocks) + 1 == enc["num_blocks"]
    assert state["audio_adaptor.linear2.weight"].shape == (adp["llm_dim"], adp["ffn_dim"])
    assert adp["use_low_frame_rate"] is True and adp["downsample_rate"] == 1
    assert conf["llm_conf"]["init_param_path"] == LLM


def test_configuration_json(fun_asr_tiny: Path) -> None:
    meta = json.loads((fun_asr_tiny / "configuration.json").read_text())
    assert meta["framework"] == "pytorch"
    assert meta["file_path_metas"]["init_param"] == "model.pt"
    assert meta["file_path_metas"]["config"] == "config.yaml"


def test_llm_config_matches_weights(fun_asr_tiny: Path, state: dict[str, torch.Tensor]) -> None:
    cfg = json.loads((fun_asr_tiny / LLM / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForCausalLM"]
    assert cfg["model_type"] == "qwen3"
    assert cfg["head_dim"] == 64  # a head size vLLM's CPU attention supports
    assert cfg["tie_word_embeddings"] is True
    embed = state["llm.model.embed_tokens.weight"]
    assert embed.shape == (cfg["vocab_size"], cfg["hidden_size"])
    q = state["llm.model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (cfg["num_attention_heads"] * cfg["head_dim"], cfg["hidden_size"])
    layers = {k.split(".")[3] for k in state if k.startswith("llm.model.layers.")}
    assert len(layers) == cfg["num_hidden_layers"]


def test_special_tokens_are_looked_up(fun_asr_tiny: Path) -> None:
    tok = Tokenizer.from_file(str(fun_asr_tiny / LLM / "tokenizer.json"))
    cfg = json.loads((fun_asr_tiny / LLM / "config.json").read_text())
    gen = json.loads((fun_asr_tiny / LLM / "generation_config.json").read_text())
    tok_cfg = json.loads((fun_asr_tiny / LLM / "tokenizer_config.json").read_text())
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS + QWEN3_EXTRA_TOKENS}
    assert None not in ids.values() and len(set(ids.values())) == len(ids)
    assert ids["<|im_end|>"] == cfg["eos_token_id"] == gen["eos_token_id"][0]
    assert ids["<|endoftext|>"] == cfg["bos_token_id"] == gen["pad_token_id"]
    assert not set(ids.values()) & set(QWEN_IDS)
    assert max(ids.values()) < cfg["vocab_size"]
    assert {int(i): d["content"] for i, d in tok_cfg["added_tokens_decoder"].items()} == {
        i: t for t, i in ids.items()
    }
    assert tok_cfg["eos_token"] == "<|im_end|>"
    encoded = tok.encode("<|im_start|>user\n语音转写<|im_end|>").ids
    assert encoded[0] == ids["<|im_start|>"] and encoded[-1] == ids["<|im_end|>"]


def test_cli_same_seed_is_identical(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "asrctl.fixtures", "fun-asr-nano", str(out), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    again = _state(out)
    assert again.keys() == state.keys()
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_other_seed_differs(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    other = _state(make_fixture("fun-asr-nano", tmp_path / "seed1", seed=1))
    assert other.keys() == state.keys()
    same = [k for k in state if torch.equal(other[k], state[k])]
    assert same == []


def test_full_size_key_counts(full_shapes: dict[str, tuple[int, ...]]) -> None:
    counts = {p: sum(k.startswith(p) for k in full_shapes) for p in PREFIXES}
    assert counts == {"audio_encoder.": 914, "audio_adaptor.": 36, "llm.": 311}


@pytest.mark.parametrize(("key", "shape"), OFFICIAL_SHAPES.items(), ids=list(OFFICIAL_SHAPES))
def test_full_size_official_shapes(
    full_shapes: dict[str, tuple[int, ...]], key: str, shape: tuple[int, ...]
) -> None:
    assert full_shapes[key] == shape


def test_full_size_has_no_extra_layers(full_shapes: dict[str, tuple[int, ...]]) -> None:
    assert [k for k in ABSENT_FULL_KEYS if k in full_shapes] == []
