"""Fun-ASR-Nano's config.yaml prompt settings, against FunASR's own prompt code.

``FunASRNano.inference`` reads ``dataset_conf.sys_prompt``, ``dataset_conf.do_think``,
``infer_with_assistant_input``, ``prev_text``, ``language`` and ``hotwords`` from the
keyword arguments AutoModel fills from config.yaml. The reference's unmodified
``get_prompt`` → ``generate_chatml`` → ``data_template`` → ``data_load_speech`` builds the
text around the audio here, with the audio loading and fbank replaced by stand-ins and a
tokenizer that records the strings it is asked to encode: the strings before and after the
audio must equal asrctl's prompt prefix and suffix.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from asrctl.adapters.base import PromptOptions
from asrctl.adapters.registry import load_adapter


def _reference():
    spec = importlib.util.find_spec("funasr")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("funasr is not installed (pip install --no-deps funasr==1.4.16)")
    shell = "funasr" not in sys.modules
    if shell:  # funasr/__init__ imports every model (25 s); this module needs none of them
        sys.modules["funasr"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module("funasr.models.fun_asr_nano.model")
    finally:
        if shell:
            del sys.modules["funasr"]


@pytest.fixture(scope="module")
def funasr_nano(monkeypatch_module):
    module = _reference()

    def fake_fbank(*args, **kwargs):
        return torch.zeros(1, 10, 560), torch.tensor([10])

    monkeypatch_module.setattr(module, "load_audio_text_image_video", lambda *a, **k: None)
    monkeypatch_module.setattr(module, "extract_fbank", fake_fbank)
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


class _Recorder:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, text: str) -> list[int]:
        self.texts.append(text)
        return [1] * max(1, len(text))


def _reference_text(module, config: dict, **generate) -> tuple[str, str]:
    """(text before the audio, text after it) as FunASR builds them for these kwargs."""
    kwargs = {**config, **generate}  # AutoModel: config.yaml keys, then generate()'s
    nano = module.FunASRNano
    prompt = nano.get_prompt(
        None, kwargs.get("hotwords", []), kwargs.get("language", None), kwargs.get("itn", True)
    )
    chat = nano.generate_chatml(None, prompt, torch.zeros(1600))
    contents = nano.data_template(None, chat)
    fake_self = types.SimpleNamespace(use_low_frame_rate=True)
    frontend = types.SimpleNamespace(fs=16000, frame_shift=10, lfr_n=6)
    tokenizer = _Recorder()
    rest = {k: v for k, v in kwargs.items() if k not in ("tokenizer", "frontend")}  # objects
    nano.data_load_speech(fake_self, contents, tokenizer, frontend, meta_data={}, **rest)
    before, after, target = tokenizer.texts
    assert target == "null<|im_end|>"
    return before, after


SETTINGS = [
    {},
    {"dataset_conf": {"do_think": False}},
    {"dataset_conf": {"sys_prompt": False}},
    {"dataset_conf": {"sys_prompt": False, "do_think": False}},
    {"infer_with_assistant_input": True},
    {"infer_with_assistant_input": True, "dataset_conf": {"do_think": False}},
    {"prev_text": "今天"},
    {"language": "中文", "hotwords": ["阿里巴巴", "通义"]},
    {"language": "粤语"},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_prompt_equals_funasr_for_config_settings(
    funasr_nano, fun_asr_tiny: Path, tmp_path: Path, settings: dict
) -> None:
    model_dir = Path(shutil.copytree(fun_asr_tiny, tmp_path / "m"))
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    for key, value in settings.items():
        if isinstance(value, dict):
            config[key] = {**(config.get(key) or {}), **value}
        else:
            config[key] = value
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    adapter = load_adapter(model_dir)
    prompt = adapter.prompt(PromptOptions())
    assert (prompt.prefix, prompt.suffix) == _reference_text(funasr_nano, config)


@pytest.mark.parametrize(
    "options, generate",
    [
        (PromptOptions(language="en"), {"language": "英文"}),
        (PromptOptions(itn=False), {"itn": False}),
        (PromptOptions(hotwords=("x",)), {"hotwords": ["x"]}),
    ],
)
def test_per_request_options_override_config(
    funasr_nano, fun_asr_tiny: Path, tmp_path: Path, options: PromptOptions, generate: dict
) -> None:
    model_dir = Path(shutil.copytree(fun_asr_tiny, tmp_path / "m"))
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    config |= {"language": "中文", "hotwords": ["y"], "dataset_conf": {"do_think": False}}
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    prompt = load_adapter(model_dir).prompt(options)
    assert (prompt.prefix, prompt.suffix) == _reference_text(funasr_nano, config, **generate)


def test_prev_text_starts_the_output_and_max_length_caps_tokens(
    fun_asr_tiny: Path, tmp_path: Path
) -> None:
    model_dir = Path(shutil.copytree(fun_asr_tiny, tmp_path / "m"))
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    config |= {"prev_text": "今天", "max_length": 64}
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    adapter = load_adapter(model_dir)
    assert adapter.postprocess("天气 /sil 很好") == "今天天气 很好"  # as FunASR: prev_text + text
    assert adapter.max_new_tokens(30) == 64
    assert load_adapter(fun_asr_tiny).max_new_tokens(30) is None  # the pipeline's 512
