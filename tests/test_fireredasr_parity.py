"""Parity of asrctl's FireRedASR-LLM path with the reference ``fireredasr`` 0.0.2 (fp32, CPU).

The reference is a test-only dependency, installed with (torch, transformers, kaldiio and
kaldi-native-fbank are already there; peft needs accelerate, which needs nothing new):

    pip install --no-deps fireredasr==0.0.2 peft==0.21.2 accelerate==1.15.0

It is run unmodified, with three shims around it:

* ``fireredasr.models.fireredasr`` imports ``modelscope`` at module level only to download
  models: a stub module stands in while it is imported (only when modelscope is absent).
* Its ``torch.load`` calls predate torch 2.6 (``weights_only`` now defaults to True and the
  checkpoints pickle an ``argparse.Namespace``): they run inside
  ``torch.serialization.safe_globals([argparse.Namespace])``.
* transformers 5 returns a dict from ``apply_chat_template(tokenize=True)``: the reference
  tokenizer's method gets ``return_dict=False``, which restores the list it expects.

What is compared, on the tiny fixture (LoRA applied by PEFT in the reference, merged into the
exported Qwen2 in asrctl):

* features (our batched torch fbank + CMVN vs kaldi-native-fbank + their CMVN);
* encoder + adapter outputs, on the same features and end to end from the wav files;
* greedy tokens of vLLM (one engine for the module, via ``Transcriber``) vs the reference
  ``FireRedAsrLlm.transcribe`` (transformers ``generate(inputs_embeds=...)``, beam 1,
  ``decode_max_len=0``), with repetition_penalty 1.0 and 3.0, each utterance alone.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from precision import assert_bf16_close

from asrctl.adapters.registry import load_adapter
from asrctl.engine import EngineOptions
from asrctl.fixtures import make_fixture
from asrctl.inputs import from_arrays
from asrctl.results import Failure, Transcript
from asrctl.transcribe import TranscribeOptions, Transcriber

REFERENCE_VERSION = "0.0.2"
REFERENCE_INSTALL = (
    f"pip install --no-deps fireredasr=={REFERENCE_VERSION} peft==0.21.2 accelerate==1.15.0"
)
SR = 16000
DURATIONS = (0.45, 0.9, 1.35, 2.2, 3.1)  # seconds: 5, 11, 17, 27 and 38 audio tokens
FEAT_ATOL = 1e-3  # normalised log-mel, float32 FFT rounding (measured 3.7e-4)
SAME_FEATS_ATOL = 2e-5  # encoder + adapter on identical features (measured 1.1e-6)
END_TO_END_ATOL = 1e-4  # from the wav, through both front ends (measured 3.9e-6)


def _import_reference() -> types.SimpleNamespace:
    """The reference's loader, feature extractor and tokenizer wrapper (or how to install it)."""
    if importlib.util.find_spec("fireredasr") is None or importlib.util.find_spec("peft") is None:
        raise ImportError(f"the FireRedASR parity test needs its reference: {REFERENCE_INSTALL}")
    stub = importlib.util.find_spec("modelscope") is None
    if stub:  # imported only for snapshot_download, which local folders never reach
        sys.modules["modelscope"] = types.SimpleNamespace(snapshot_download=None)
    try:
        from fireredasr.data.asr_feat import ASRFeatExtractor
        from fireredasr.models.fireredasr import load_firered_llm_model_and_tokenizer
        from fireredasr.tokenizer.llm_tokenizer import LlmTokenizerWrapper
    finally:
        if stub:
            del sys.modules["modelscope"]
    return types.SimpleNamespace(
        load=load_firered_llm_model_and_tokenizer,
        FeatExtractor=ASRFeatExtractor,
        TokenizerWrapper=LlmTokenizerWrapper,
    )


fireredasr = _import_reference()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fixture("fireredasr-llm", tmp_path_factory.mktemp("fr") / "FireRedASR-LLM-L")


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """16-bit wav files: a seeded chirp plus noise per duration (no digital silence)."""
    folder = tmp_path_factory.mktemp("wav")
    paths = []
    for i, seconds in enumerate(DURATIONS):
        rng = np.random.default_rng(i)
        t = np.arange(round(SR * seconds)) / SR
        x = 0.3 * np.sin(2 * np.pi * (150 + 250 * i) * t * (1 + t)) + 0.05 * rng.standard_normal(
            t.size
        )
        path = folder / f"utt{i}.wav"
        sf.write(path, np.clip(x, -1, 1).astype(np.float32), SR, subtype="PCM_16")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def arrays(wavs: list[Path]) -> list[np.ndarray]:
    """The wav files as float32 in [-1, 1] (int16 / 32768, exactly)."""
    return [sf.read(p, dtype="float32")[0] for p in wavs]


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> types.SimpleNamespace:
    """The reference's FireRedAsrLlm (PEFT LoRA), tokenizer and feature extractor."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        model, tokenizer = fireredasr.load(
            str(model_dir / "model.pth.tar"),
            str(model_dir / "asr_encoder.pth.tar"),
            str(model_dir / "Qwen2-7B-Instruct"),
        )
    tokenizer.apply_chat_template = functools.partial(
        tokenizer.apply_chat_template, return_dict=False
    )
    return types.SimpleNamespace(
        model=model.eval(),
        tokenizer=tokenizer,
        features=fireredasr.FeatExtractor(str(model_dir / "cmvn.ark")),
    )


@pytest.fixture(scope="module")
def ours(model_dir: Path):
    return load_adapter(model_dir).audio_encoder("cpu", torch.float32)


@pytest.fixture(scope="module")
def transcriber(model_dir: Path):
    options = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
    with Transcriber(model_dir, engine_options=options, device="cpu") as t:
        yield t


# --- reference helpers ----------------------------------------------------------------


@torch.no_grad()
def _ref_embeddings(reference, wav: Path) -> torch.Tensor:
    feats, lengths, _ = reference.features([str(wav)])
    enc, enc_lengths, _ = reference.model.encoder(feats, lengths)
    out, _ = reference.model.encoder_projector(enc, enc_lengths)
    return out[0]


@torch.no_grad()
def _ref_tokens(reference, wav: Path, repetition_penalty: float) -> list[int]:
    """What ``FireRedAsr.transcribe`` generates for one file (beam 1, decode_max_len 0)."""
    feats, lengths, _ = reference.features([str(wav)])
    ids, mask, _, _ = fireredasr.TokenizerWrapper.preprocess_texts(
        [""], reference.tokenizer, max_len=128, decode=True
    )
    out = reference.model.transcribe(
        feats,
        lengths,
        ids,
        mask,
        beam_size=1,
        decode_max_len=0,
        decode_min_len=0,
        repetition_penalty=repetition_penalty,
        llm_length_penalty=0.0,
        temperature=1.0,
    )[0].tolist()
    # The reference stops only at <|im_end|>; asrctl (vLLM) also stops at <|endoftext|>,
    # the other eos of Qwen2's generation_config.json: compare up to the first of either.
    stops = {reference.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    for i, token in enumerate(out):
        if token in stops:
            return out[: i + 1]
    return out


def _transcribe(transcriber, arrays, **options) -> list[Transcript | Failure]:
    results = [
        r
        for batch in transcriber.transcribe(from_arrays(arrays, SR), TranscribeOptions(**options))
        for r in batch
    ]
    return sorted(results, key=lambda r: r.key)


def _check_tokens(results, reference, wavs, penalty: float) -> list[tuple[int, ...]]:
    assert [type(r) for r in results] == [Transcript] * len(wavs)
    for r, wav in zip(results, wavs, strict=True):
        expected = _ref_tokens(reference, wav, penalty)
        assert list(r.token_ids) == expected, f"{wav.name} (repetition_penalty {penalty})"
        # Random weights emit byte tokens that are not valid UTF-8: the reference decodes
        # them to U+FFFD, vLLM's incremental detokenizer holds an undecodable tail back.
        text = reference.tokenizer.decode(expected, skip_special_tokens=True).strip()
        held_back = text[len(r.text) :]
        assert text.startswith(r.text) and (not held_back or "\ufffd" in held_back), wav.name
    return [r.token_ids for r in results]


# --- tests ----------------------------------------------------------------------------------


def test_reference_version() -> None:
    assert importlib.metadata.version("fireredasr") == REFERENCE_VERSION, REFERENCE_INSTALL


def test_reference_uses_every_fixture_tensor(model_dir: Path, reference) -> None:
    """The reference loads with strict=False: make sure the encoder and LoRA really landed."""
    from asrctl.adapters.fireredasr_llm import load_checkpoint

    state = load_checkpoint(model_dir / "model.pth.tar")["model_state_dict"]
    loaded = reference.model.state_dict()
    assert state.keys() <= loaded.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_features_match_reference(reference, ours, wavs, arrays) -> None:
    feats, lengths = ours.features([torch.from_numpy(a) for a in arrays])
    for i, wav in enumerate(wavs):
        ref, ref_len, _ = reference.features([str(wav)])
        assert int(lengths[i]) == int(ref_len[0])
        diff = float((feats[i, : lengths[i]] - ref[0]).abs().max())
        assert diff < FEAT_ATOL, f"{wav.name}: features max abs diff {diff:.3g}"


@torch.no_grad()
def test_encoder_matches_reference_on_same_features(reference, ours, wavs) -> None:
    """Each utterance alone and the padded batch (their features) equal the reference alone."""
    feats, lengths, _ = reference.features([str(w) for w in wavs])  # zero-padded batch
    batched = ours.embed_features(feats, lengths)
    for i, wav in enumerate(wavs):
        ref = _ref_embeddings(reference, wav)
        alone = ours.embed_features(feats[i : i + 1, : lengths[i]], lengths[i : i + 1])[0]
        assert alone.shape == batched[i].shape == ref.shape
        diff = max(float((alone - ref).abs().max()), float((batched[i] - ref).abs().max()))
        assert diff < SAME_FEATS_ATOL, f"{wav.name}: encoder+adapter max abs diff {diff:.3g}"


@torch.no_grad()
def test_audio_embeddings_match_reference(reference, ours, wavs, arrays) -> None:
    """From the wav files through each side's own front end, batched on our side."""
    embeds = ours([torch.from_numpy(a) for a in arrays])
    for emb, wav in zip(embeds, wavs, strict=True):
        ref = _ref_embeddings(reference, wav)
        diff = float((emb - ref).abs().max())
        assert emb.shape == ref.shape and diff < END_TO_END_ATOL, f"{wav.name}: {diff:.3g}"


@torch.no_grad()
def test_bfloat16_encoder_stays_close_to_reference(model_dir, reference, wavs, arrays) -> None:
    """asrctl's --encoder-dtype bfloat16 against the float32 reference."""
    half = load_adapter(model_dir).audio_encoder("cpu", torch.bfloat16)
    embeds = half([torch.from_numpy(a) for a in arrays])
    assert_bf16_close(embeds, [_ref_embeddings(reference, wav) for wav in wavs])


@pytest.mark.vllm
def test_greedy_tokens_equal_reference(transcriber, reference, wavs, arrays) -> None:
    tokens = _check_tokens(
        _transcribe(transcriber, arrays, repetition_penalty=1.0), reference, wavs, 1.0
    )
    assert len(set(tokens)) == len(tokens)  # outputs depend on the audio


@pytest.mark.vllm
def test_repetition_penalty_3_equals_reference(transcriber, reference, wavs, arrays) -> None:
    """The family default (3.0, on generated tokens only) equals the reference's."""
    tokens = _check_tokens(_transcribe(transcriber, arrays), reference, wavs, 3.0)
    plain = [r.token_ids for r in _transcribe(transcriber, arrays, repetition_penalty=1.0)]
    assert tokens != plain  # the penalty changes the output on this fixture


@pytest.mark.vllm
def test_repetition_penalty_ignores_earlier_requests(transcriber, reference, wavs, arrays) -> None:
    """A penalised request is unaffected by what ran before it in its batch slot.

    vLLM keeps each slot's token ids between requests; a pure prompt-embeds request never
    overwrites its prompt span, so without asrctl's placeholder ids the short request's
    output tokens (written past its own short prompt) would be penalised as "prompt" tokens
    of the long request that reuses the slot.
    """
    short, long = 0, len(wavs) - 1
    _transcribe(transcriber, [arrays[short]], repetition_penalty=1.0)
    (result,) = _transcribe(transcriber, [arrays[long]], repetition_penalty=3.0)
    assert list(result.token_ids) == _ref_tokens(reference, wavs[long], 3.0)


@pytest.mark.vllm
def test_over_30_seconds_fails_naming_the_key(transcriber, arrays) -> None:
    long = np.tile(arrays[-1], 10)[: 31 * SR]
    items = from_arrays([arrays[0], long], SR)
    results = [r for batch in transcriber.transcribe(items) for r in batch]
    failures = [r for r in results if isinstance(r, Failure)]
    assert len(results) == 2 and len(failures) == 1
    key = items[1].key
    assert failures[0].key == key
    assert failures[0].error.startswith(f"{key}: audio is 31.0 s"), failures[0].error
    assert "at most 30 s" in failures[0].error
