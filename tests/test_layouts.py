"""Every key layout transformers loads for GLM-ASR and VibeVoice-ASR-HF goes through setup,
and setup refuses an LLM export that misses tensors or disagrees with its config.

The layouts are the ones ``from_pretrained`` accepts (checked here against transformers
itself): the release names the conversion scripts write (``language_model.model.*``, audio
modules at the top), the doubled prefix ``save_pretrained`` writes for a model built from
a config (``language_model.model.model.*``), the in-memory names, and a sharded copy.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from clirun import run_asrctl
from safetensors.torch import load_file, save_file

from asrctl.adapters._hf import KeyLayout, config_dtype
from asrctl.adapters.registry import load_adapter
from asrctl.errors import ModelDirError
from asrctl.export import export_llm
from asrctl.fixtures import make_fixture
from asrctl.llm_check import check_llm, expected_shapes

transformers = pytest.importorskip("transformers")

AUDIO = {
    "glm-asr-nano": ("audio_tower", "multi_modal_projector"),
    "vibevoice-asr-hf": (
        "acoustic_tokenizer_encoder",
        "semantic_tokenizer_encoder",
        "multi_modal_projector",
    ),
}

CLASSES = {
    "glm-asr-nano": "GlmAsrForConditionalGeneration",
    "vibevoice-asr-hf": "VibeVoiceAsrForConditionalGeneration",
}


def _in_memory(family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Release names -> the module names (what the fixtures write)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^language_model\.lm_head\.", "lm_head.", k)
        k = re.sub(r"^language_model\.model\.", "model.language_model.", k)
        if k.split(".")[0] in AUDIO[family]:
            k = "model." + k
        out[k] = v
    return out


def _release(family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    layout = KeyLayout(AUDIO[family])
    return {layout.canonical(k): v for k, v in state.items()}


def _saved(family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        re.sub(r"^language_model\.model\.", "language_model.model.model.", k): v
        for k, v in _release(family, state).items()
    }


def _read_all(model_dir: Path) -> dict[str, torch.Tensor]:
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state |= load_file(f)
    return state


def _rewrite(model_dir: Path, state: dict[str, torch.Tensor], shards: int = 1) -> None:
    for f in model_dir.glob("model*.safetensors*"):
        f.unlink()
    if shards == 1:
        save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    names, weight_map = list(state), {}
    per = -(-len(names) // shards)
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[k * per : (k + 1) * per]}
        save_file(part, str(model_dir / fname), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, fname)
    index = {"metadata": {}, "weight_map": weight_map}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {f: make_fixture(f, root / f) for f in AUDIO}


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".asrctl")))


LAYOUTS = {
    "in-memory": (_in_memory, 1),
    "release": (_release, 1),
    "saved": (_saved, 1),
    "release-sharded": (_release, 3),
}


@pytest.mark.parametrize("family", list(AUDIO))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_loads_in_transformers_and_exports_the_same_llm(
    fixtures, family: str, layout: str, tmp_path: Path
) -> None:
    base = fixtures[family]
    reference = export_llm(load_adapter(_copy(base, tmp_path / "base")))
    expected = load_file(reference.llm_dir / "model.safetensors")
    convert, shards = LAYOUTS[layout]
    model_dir = _copy(base, tmp_path / layout)
    state = _in_memory(family, _release(family, _read_all(base)))
    _rewrite(model_dir, convert(family, state), shards)
    # transformers itself loads this layout with nothing missing or left over
    _, info = getattr(transformers, CLASSES[family]).from_pretrained(
        model_dir, output_loading_info=True
    )
    assert not any(info.values()), info
    adapter = load_adapter(model_dir)
    assert layout.split("-")[0] in adapter.layout or layout == "in-memory"
    exported = load_file(export_llm(adapter).llm_dir / "model.safetensors")
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in expected)
    # and the audio modules load: the encoder is built strictly from them
    adapter.audio_encoder("cpu", torch.float32)


@pytest.mark.parametrize("family", list(AUDIO))
def test_transformers_save_pretrained_folder(fixtures, family: str, tmp_path: Path) -> None:
    """A folder written by the original class's save_pretrained goes through setup."""
    from transformers import AutoConfig

    base = fixtures[family]
    config = AutoConfig.from_pretrained(base)
    torch.manual_seed(0)
    model = getattr(transformers, CLASSES[family])(config)
    out = tmp_path / "saved"
    model.save_pretrained(out)
    for name in base.iterdir():  # tokenizer, chat template, preprocessor
        if name.is_file() and not (out / name.name).exists() and "safetensors" not in name.name:
            shutil.copy(name, out / name.name)
    assert any(k.startswith("language_model.model.model.") for k in _read_all(out))
    adapter = load_adapter(out)
    assert "save_pretrained" in adapter.layout
    llm_dir = export_llm(adapter).llm_dir
    exported = load_file(llm_dir / "model.safetensors")
    memory = model.state_dict()
    assert torch.equal(
        exported["model.embed_tokens.weight"], memory["model.language_model.embed_tokens.weight"]
    )
    assert len(exported) == len(expected_shapes(json.loads((llm_dir / "config.json").read_text())))
    # the checkpoint was saved in float32: the export says so (config "dtype", not torch_dtype)
    saved = json.loads((out / "config.json").read_text())
    assert saved.get("dtype") == "float32" and "torch_dtype" not in saved
    exported_config = json.loads((llm_dir / "config.json").read_text())
    assert config_dtype(exported_config) == "float32"
    assert exported_config["torch_dtype"] == exported_config["dtype"] == "float32"


def test_vibevoice_release_layout_is_not_an_empty_export(fixtures, tmp_path: Path) -> None:
    """The issue's reproduction: the conversion-script names gave an export of 0 tensors."""
    model_dir = _copy(fixtures["vibevoice-asr-hf"], tmp_path / "rel")
    _rewrite(model_dir, _release("vibevoice-asr-hf", _read_all(model_dir)))
    exported = load_file(export_llm(load_adapter(model_dir)).llm_dir / "model.safetensors")
    assert "lm_head.weight" in exported and "model.layers.1.mlp.down_proj.weight" in exported
    from asrctl import verify

    [check] = [c for c in verify.model_checks(model_dir) if c.name == "layout"]
    assert check.status == "ok" and "release (transformers conversion)" in check.detail
    assert "language_model.model.layers (" in check.detail
    assert "acoustic_tokenizer_encoder (" in check.detail


@pytest.mark.parametrize("family", list(AUDIO))
def test_missing_llm_tensors_fail_setup_with_exit_3(fixtures, family: str, tmp_path: Path) -> None:
    model_dir = _copy(fixtures[family], tmp_path / "partial")
    state = _read_all(model_dir)
    kept = {k: v for k, v in state.items() if ".layers.1." not in k or "language_model" not in k}
    final_norm = re.compile(r"language_model\.(model\.)?norm\.weight$")
    kept = {k: v for k, v in kept.items() if not final_norm.search(k)}
    _rewrite(model_dir, kept)
    with pytest.raises(ModelDirError) as e:
        export_llm(load_adapter(model_dir))
    assert "model.layers.1.*" in str(e.value) and "model.norm.weight" in str(e.value)
    assert not (model_dir / ".asrctl" / "llm").exists()
    proc = run_asrctl("setup", str(model_dir), timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "model.layers.1.*" in proc.stderr and "Traceback" not in proc.stderr


def test_config_sizes_disagreeing_with_weights_fail_setup(fun_asr_copy: Path) -> None:
    conf = fun_asr_copy / "Qwen3-0.6B" / "config.json"
    data = json.loads(conf.read_text())
    data["intermediate_size"] *= 2
    conf.write_text(json.dumps(data))
    proc = run_asrctl("setup", str(fun_asr_copy), timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "Qwen3-0.6B/config.json disagrees with the weights' sizes" in proc.stderr
    assert "mlp.gate_proj.weight" in proc.stderr and "Traceback" not in proc.stderr


def test_check_llm_messages() -> None:
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 8,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 16,
        "vocab_size": 32,
        "num_hidden_layers": 2,
    }
    full = expected_shapes(config)
    assert "model.layers.0.self_attn.q_proj.bias" in full and "lm_head.weight" in full
    assert check_llm(config, full, config_name="c.json") == []
    assert "no LLM tensors" in check_llm(config, {}, config_name="c.json")[0]
    only_embed = {"model.embed_tokens.weight": (32, 8)}
    [msg] = check_llm(config, only_embed, config_name="c.json")
    assert "every layer (model.layers.0-1.*)" in msg and "lm_head.weight" in msg
    extra = dict(full) | {"model.layers.2.mlp.up_proj.weight": (16, 8)}
    assert "model.layers.2.mlp.up_proj.weight" in check_llm(config, extra, config_name="c")[0]
    llama = dict(config, architectures=["LlamaForCausalLM"], attention_bias=True, mlp_bias=True)
    biases = [n for n in expected_shapes(llama) if n.endswith(".bias")]
    assert len(biases) == 2 * 7  # q, k, v, o, gate, up, down per layer
    tied = dict(config, tie_word_embeddings=True)
    assert check_llm(tied, full, config_name="c") == []  # a saved tied lm_head is allowed


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"dtype": "float32"}, "float32"),
        ({"torch_dtype": "float16"}, "float16"),
        ({"dtype": "float32", "torch_dtype": "bfloat16"}, "float32"),  # transformers 5 wins
    ],
)
def test_llm_config_dtype_spellings_agree_after_export(
    fun_asr_copy: Path, keys: dict, expected: str
) -> None:
    conf = fun_asr_copy / "Qwen3-0.6B" / "config.json"
    data = {k: v for k, v in json.loads(conf.read_text()).items() if "dtype" not in k}
    conf.write_text(json.dumps(data | keys))
    exported = json.loads(
        (export_llm(load_adapter(fun_asr_copy)).llm_dir / "config.json").read_text()
    )
    assert exported["dtype"] == exported["torch_dtype"] == expected
