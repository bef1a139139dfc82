"""Fun-ASR-Nano whole pipeline against the original's whole pipeline (funasr 1.4.16, CPU).

The checkpoint is written by the original class: funasr's ``AutoModel`` builds ``FunASRNano``
from the seeded fixture, and its ``state_dict()`` is saved the way funasr's trainer saves a
checkpoint (``torch.save({"epoch", "step", "state_dict", ...})`` in ``model.pt``; the LLM in
``llm_conf.llm_dtype``, bf16, the encoder and adaptor in float32). The original pipeline is
``AutoModel(model=DIR, frontend_conf={"dither": 0.0}).generate(wav)`` with its defaults:
``FunASRNano.inference_llm`` runs transformers' ``generate`` on ``inputs_embeds`` with
``max_new_tokens=512``, no ``llm_kwargs`` and an LLM built by ``from_config`` (so greedy,
repetition penalty 1.0, whatever generation_config.json says), the LLM cast to float32
(``llm_dtype`` fp32 at inference), ``batch_decode(skip_special_tokens=True)``.

Features: funasr 1.4.16's ``funasr.utils.fbank`` computes fbank with kaldi-native-fbank by itself
when torchaudio cannot be imported (as here: torch 2.13+cpu), so no torchaudio stand-in is
needed; asrctl computes its fbank with kaldi-native-fbank too, so both sides get the same
features. asrctl runs as a user does: ``asrctl transcribe --raw-text`` with default decoding
settings. One vLLM engine for the module (the transcribe run).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path

import pytest
import torch
from parity import asrctl_texts, assert_audio_dependent, assert_same_text, chirp_wavs

from asrctl.fixtures import make_fixture

pytest.importorskip("funasr")
SR = 16000
DURATIONS = (1.2, 2.7, 4.3)
# Greedy steps whose top-2 logit margin is below TIE may flip between vLLM and transformers:
# fed funasr's own prompt embeddings (fp32, CPU), vLLM's margins differ from transformers'
# by up to 3.4e-3 (transformers fp32 vs float64: 4e-6), so only the transcript up to the first
# such step is compared (the whole of it where there is none).
TIE = 0.01
MIN_STABLE_CHARS = 3  # the compared part is never empty


@pytest.fixture(scope="module")
def funasr_auto_model():
    from funasr import AutoModel

    return AutoModel


def _load(auto_model, model_dir: Path):
    return auto_model(
        model=str(model_dir),
        device="cpu",
        disable_update=True,
        frontend_conf={"dither": 0.0},  # WavFrontend's default dither is 1.0 (random)
    )


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, funasr_auto_model):
    """(saved folder, AutoModel on it): the fixture's weights, saved from FunASRNano."""
    root = tmp_path_factory.mktemp("fun-asr-original")
    src = make_fixture("fun-asr-nano", root / "fixture", size="tiny", seed=3)
    built = _load(funasr_auto_model, src).model
    assert type(built).__name__ == "FunASRNano"
    out = Path(shutil.copytree(src, root / "saved"))
    state = {"epoch": 1, "step": 100, "total_step": 100, "state_dict": built.state_dict()}
    torch.save(state, out / "model.pt")
    return out, _load(funasr_auto_model, out)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fun-asr-wav")
    return chirp_wavs(folder, DURATIONS, SR, seed=40, base_hz=170, step_hz=210, sweep=0.15)


def test_reference_version() -> None:
    assert importlib.metadata.version("funasr") == "1.4.16"


def test_saved_checkpoint_is_the_trainers_layout(original) -> None:
    saved, model = original
    ckpt = torch.load(saved / "model.pt", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    assert ckpt["epoch"] == 1
    assert state["llm.model.embed_tokens.weight"].dtype == torch.bfloat16
    assert state["audio_encoder.encoders0.0.self_attn.linear_q_k_v.weight"].dtype == torch.float32
    memory = model.model.state_dict()
    assert state.keys() == memory.keys()


def _clean(text: str) -> str:
    """FunASRNano.inference_llm's clean-up of the decoded text."""
    return re.sub(r"\s+", " ", text.replace("/sil", " "))


@torch.no_grad()
def _reference(auto_model, wav: Path) -> tuple[str, str]:
    """(the pipeline's text, its text up to the first near-tie of the greedy search).

    The text is ``AutoModel.generate``'s. The near-ties come from the same computation made
    step by step: ``FunASRNano.inference_prepare`` (the pipeline's own prompt embeddings)
    then the LLM's ``generate`` with ``output_scores``; its text must equal the pipeline's.
    """
    [result] = auto_model.generate(input=str(wav), batch_size=1)
    model, tokenizer = auto_model.model, auto_model.kwargs["tokenizer"]
    kwargs = {k: v for k, v in auto_model.kwargs.items() if k not in ("tokenizer", "frontend")}
    chat = model.generate_chatml(model.get_prompt([], None, True), str(wav))
    embeds, _, batch, _, _ = model.inference_prepare(
        [chat], None, ["k"], tokenizer, auto_model.kwargs["frontend"], **kwargs
    )
    llm = model.llm.float()
    out = llm.generate(
        inputs_embeds=embeds.float(),
        attention_mask=batch.get("attention_mask"),
        max_new_tokens=512,
        pad_token_id=llm.config.pad_token_id or llm.config.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    ids = out.sequences[0].tolist()
    assert _clean(tokenizer.decode(ids, skip_special_tokens=True)) == result["text"]
    margins = [float(s[0].topk(2).values.diff().abs()) for s in out.scores]
    ties = [i for i, m in enumerate(margins) if m < TIE]
    stable = ids[: ties[0]] if ties else ids
    return result["text"], _clean(tokenizer.decode(stable, skip_special_tokens=True))


@pytest.mark.vllm
def test_asrctl_transcribe_equals_the_original_pipeline(original, wavs, tmp_path: Path) -> None:
    saved, model = original
    references = [_reference(model, wav) for wav in wavs]
    model_dir = Path(shutil.copytree(saved, tmp_path / "Fun-ASR-Nano"))
    # the reference runs its LLM in float32 (inference's llm_dtype default); the raw text
    # gets funasr's whitespace clean-up
    texts = asrctl_texts(model_dir, wavs, tmp_path / "out", "--dtype", "float32")
    got = [_clean(text) for text in texts]
    for wav, text, (reference, stable) in zip(wavs, got, references, strict=True):
        if stable == reference:  # no near-tie: the whole transcript agrees
            assert_same_text(wav.name, text, reference)
        else:  # up to the near-tie (a last partial character may complete differently)
            assert text.startswith(stable.rstrip("\ufffd")), (wav.name, text, stable)
        assert len(stable) >= MIN_STABLE_CHARS, (wav.name, stable)
    assert_audio_dependent(got)
