"""VibeVoice-ASR whole pipeline against the original's whole pipeline (transformers, fp32, CPU).

The checkpoint is written by the original class: transformers'
``VibeVoiceAsrForConditionalGeneration.save_pretrained`` plus ``VibeVoiceAsrProcessor
.save_pretrained``, with the chat template of ``microsoft/VibeVoice-ASR-HF``
(``CHAT_TEMPLATE`` below: the text ``create_processor`` in transformers'
``models/vibevoice_asr/convert_vibevoice_asr_to_hf.py`` gives the processor, data copied from
there). The original pipeline is the model card's: ``processor.apply_transcription_request``
then ``model.generate(do_sample=False)`` and ``decode(skip_special_tokens=True)``, with two
differences, both stated where they are made:

- ``vae_std = 0``: the -HF model adds Gaussian noise to the acoustic latents at every call
  (``get_audio_features``: ``vae_std * randn``), so its output is random; asrctl uses the VAE
  mean. Like funasr's dither, no deterministic pipeline can match the noisy one.
- the assistant header: the template (like Microsoft's own ``VibeVoiceASRProcessor``, whose
  ``add_generation_prompt`` is unused) ends the prompt at ``<|im_end|>\\n`` and lets the model
  write ``<|im_start|>assistant\\n`` itself (the model card's decoded outputs start with
  ``assistant\\n``); asrctl's prompt ends with that header, as Microsoft's vLLM plugin's chat
  prompt does. A trained model writes the header, after which both pipelines decode from the
  same token prefix; random weights do not, so the reference gets the header appended to its
  prompt ids (the test checks that this is exactly asrctl's prompt tail).

asrctl runs as a user does: ``asrctl transcribe --raw-text`` with default decoding settings
(its cap of ``256 + 2 * audio positions`` new tokens is given to the reference too). One vLLM
engine for the module (the transcribe run).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from parity import asrctl_texts, assert_audio_dependent, assert_same_text, chirp_wavs

from asrctl.adapters.base import PromptOptions
from asrctl.adapters.registry import load_adapter
from asrctl.fixtures import make_fixture

transformers = pytest.importorskip("transformers")
SR = 24000
HOP = 3200
DURATIONS = (0.7, 1.9, 3.1)
HEADER = "<|im_start|>assistant\n"

# microsoft/VibeVoice-ASR-HF's chat_template.jinja, as transformers' conversion script writes it
CHAT_TEMPLATE = """\
{%- set system_prompt = system_prompt | default("You are a helpful assistant that transcribes \
audio input into text output in JSON format.") -%}
<|im_start|>system
{{ system_prompt }}<|im_end|>
{%- set audio_token = audio_token | default("<|box_start|>") -%}
{%- set audio_start_token = "<|object_ref_start|>" -%}
{%- set audio_end_token = "<|object_ref_end|>" -%}
{%- for message in messages -%}
    {%- if message['role'] == 'user' -%}
{{ '\\n' }}<|im_start|>user{{ '\\n' }}{%- set text_items = message['content'] \
| selectattr('type', 'equalto', 'text') | list -%}
        {%- set context_text = text_items[0]['text'] if text_items else none -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
{{ audio_start_token }}{{ audio_token }}{{ audio_end_token }}{{ "\\n" }}{%- if context_text -%}
This is a <|AUDIO_DURATION|> seconds audio, with extra info: {{ context_text }}

Please transcribe it with these keys: Start time, End time, Speaker ID, Content{%- else -%}
This is a <|AUDIO_DURATION|> seconds audio, please transcribe it with these keys: \
Start time, End time, Speaker ID, Content{%- endif -%}
            {%- endif -%}
        {%- endfor -%}
<|im_end|>{{ '\\n' }}
    {%- endif -%}
{%- endfor -%}"""


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory):
    """(saved folder, processor, model): weights of the seeded fixture, written by transformers."""
    from transformers import (
        AutoTokenizer,
        VibeVoiceAcousticTokenizerFeatureExtractor,
        VibeVoiceAsrForConditionalGeneration,
        VibeVoiceAsrProcessor,
    )

    root = tmp_path_factory.mktemp("vibevoice-original")
    src = make_fixture("vibevoice-asr-hf", root / "fixture", seed=5)
    processor = VibeVoiceAsrProcessor(
        VibeVoiceAcousticTokenizerFeatureExtractor.from_pretrained(src),
        AutoTokenizer.from_pretrained(src),
        chat_template=CHAT_TEMPLATE,
    )
    loaded = VibeVoiceAsrForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
    # built from a config (not loaded), as a trained or converted model is
    model = VibeVoiceAsrForConditionalGeneration(loaded.config).eval()
    model.load_state_dict(loaded.state_dict())
    out = root / "saved"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if not (out / "chat_template.jinja").is_file():  # older processors embed it in JSON
        (out / "chat_template.jinja").write_text(processor.chat_template)
    model.config.acoustic_tokenizer_encoder_config.vae_std = 0.0  # see the module docstring
    return out, processor, model


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("vibevoice-wav")
    return chirp_wavs(folder, DURATIONS, SR, seed=60, base_hz=190, step_hz=250, sweep=0.1)


def _reference_inputs(processor, wav: Path):
    audio, sr = sf.read(wav, dtype="float32")
    assert sr == SR
    inputs = processor.apply_transcription_request(audio)
    header = processor.tokenizer.encode(HEADER, add_special_tokens=False, return_tensors="pt")
    inputs["input_ids"] = torch.cat([inputs["input_ids"], header], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return inputs, len(audio)


def test_processor_prompt_plus_header_is_asrctls_prompt(original, wavs) -> None:
    saved, processor, _ = original
    adapter = load_adapter(saved)
    for wav in wavs:
        inputs, samples = _reference_inputs(processor, wav)
        text = processor.tokenizer.decode(inputs["input_ids"][0])
        n_audio = math.ceil(samples / HOP)
        prompt = adapter.prompt_for_audio(PromptOptions(), samples / SR)
        assert text == prompt.prefix + "<|box_start|>" * n_audio + prompt.suffix


@torch.no_grad()
def _original_text(processor, model, wav: Path) -> str:
    inputs, samples = _reference_inputs(processor, wav)
    cap = min(32768, 256 + 2 * math.ceil(samples / HOP))  # asrctl's default for VibeVoice
    out = model.generate(**inputs, do_sample=False, max_new_tokens=cap)
    new = out[0, inputs["input_ids"].shape[1] :]
    return processor.decode(new, skip_special_tokens=True)


@pytest.mark.vllm
def test_asrctl_transcribe_equals_the_original_pipeline(original, wavs, tmp_path: Path) -> None:
    saved, processor, model = original
    model_dir = Path(shutil.copytree(saved, tmp_path / "VibeVoice-ASR-HF"))
    texts = asrctl_texts(model_dir, wavs, tmp_path / "out", "--max-model-len", "2048")
    for wav, text in zip(wavs, texts, strict=True):
        assert_same_text(wav.name, text, _original_text(processor, model, wav))
    assert_audio_dependent(texts)
