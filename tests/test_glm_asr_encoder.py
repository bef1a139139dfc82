"""GLM-ASR-Nano's encoder options against the original: trimmed windows (opt-in
``$ASRCTL_GLM_TRIM``) and bfloat16 attention inside a float32 encoder (benchmark variant).

What is claimed, and proven here against transformers' ``GlmAsrProcessor`` +
``GlmAsrModel.get_audio_features`` (the original) on the tiny fixture:

* the default (30 s windows) is the original's computation: the padded frames take part
  in the attention, so they change the valid rows (trimmed ≠ padded, measured here);
* a trimmed window is exactly the original model fed that window's features cut to the
  valid frames rounded up to the step (the same log-mel, the same encoder), whatever
  other windows share the batch;
* trimming keeps every utterance's number of audio tokens (the prompt length).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from glm_reference import SR, chirp, transformers_glm
from precision import BF16_RTOL, worst_relative_error

from asrctl.adapters.registry import load_adapter
from asrctl.errors import OptionsError
from asrctl.fixtures import make_fixture
from asrctl.models import glm_asr as glm
from asrctl.models.glm_asr import (
    BF16_ATTENTION,
    FRAME_STEP,
    TRIM_ENV,
    WhisperFeatureOptions,
    encoded_frames,
    register_attention,
    trim_frames,
)

DURATIONS = (0.7, 3.3, 8.0, 9.1, 31.4, 61.2)  # 1, 1, 1, 1, 2 and 3 windows of 30 s
ATOL = 1e-5  # fp32, the same modules on the same features (measured ~1e-7 on CPU)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fixture("glm-asr-nano", tmp_path_factory.mktemp("glm") / "GLM-ASR-Nano-2512")


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    return [chirp(s, i) for i, s in enumerate(DURATIONS)]


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    return transformers_glm(model_dir)


@torch.no_grad()
def _original(reference, audio: np.ndarray, step: int | None) -> torch.Tensor:
    """The original's embeddings, each window's features cut to what the encoder sees."""
    processor, model = reference
    inputs = processor.apply_transcription_request(audio)
    feats, mask = inputs["input_features"], inputs["input_features_mask"]
    options = WhisperFeatureOptions()
    rows = []
    for w in range(feats.shape[0]):
        n = encoded_frames(int(mask[w].sum()), options, step)
        out = model.model.get_audio_features(feats[w : w + 1, :, :n], mask[w : w + 1, :n])
        rows.append(out.pooler_output)
    return torch.cat(rows)


def _encoder(model_dir: Path, monkeypatch, trim: str | None):
    if trim is None:
        monkeypatch.delenv(TRIM_ENV, raising=False)
    else:
        monkeypatch.setenv(TRIM_ENV, trim)
    return load_adapter(model_dir).audio_encoder("cpu", torch.float32)


@pytest.mark.parametrize("seconds", ["2", "0.5"])
@torch.no_grad()
def test_trimmed_equals_original_on_cut_windows(
    model_dir: Path, reference, arrays, monkeypatch, seconds: str
) -> None:
    """Every utterance in one call (windows of several lengths batched by length)."""
    encoder = _encoder(model_dir, monkeypatch, seconds)
    step = trim_frames(seconds, WhisperFeatureOptions())
    assert encoder.trim == step
    embeds = encoder([torch.from_numpy(a) for a in arrays])
    for secs, audio, emb in zip(DURATIONS, arrays, embeds, strict=True):
        ref = _original(reference, audio, step)
        assert emb.shape == ref.shape, f"{secs} s: {tuple(emb.shape)} vs {tuple(ref.shape)}"
        diff = float((emb - ref).abs().max())
        assert diff <= ATOL, f"{secs} s: max abs diff {diff:.3g}"


@torch.no_grad()
def test_trimmed_does_not_depend_on_batch_mates(model_dir: Path, arrays, monkeypatch) -> None:
    encoder = _encoder(model_dir, monkeypatch, "2")
    together = encoder([torch.from_numpy(a) for a in arrays])
    for audio, emb in zip(arrays, together, strict=True):
        (alone,) = encoder([torch.from_numpy(audio)])
        assert float((alone - emb).abs().max()) <= ATOL


@torch.no_grad()
def test_default_is_the_original_and_trimming_changes_it(
    model_dir: Path, reference, arrays, monkeypatch
) -> None:
    """The 30 s windows are the original's; the padded frames matter to its valid rows,
    so trimmed embeddings differ (the token counts do not)."""
    padded = _encoder(model_dir, monkeypatch, None)
    trimmed = _encoder(model_dir, monkeypatch, "2")
    assert padded.trim is None
    waves = [torch.from_numpy(a) for a in arrays]
    full, cut = padded(waves), trimmed(waves)
    for secs, audio, a, b in zip(DURATIONS, arrays, full, cut, strict=True):
        ref = _original(reference, audio, None)
        assert float((a - ref).abs().max()) <= ATOL
        assert a.shape == b.shape
        rel = float((a - b).norm() / a.norm())
        assert rel > 1e-3, f"{secs} s: trimming should change a window with padding"


def test_trim_setting() -> None:
    options = WhisperFeatureOptions()
    assert trim_frames(None, options) is None
    assert trim_frames("", options) is None
    assert trim_frames("0", options) is None
    assert trim_frames("2", options) == 200
    assert trim_frames("0.01", options) == FRAME_STEP  # at least one token's frames
    assert trim_frames("1.05", options) == 112  # 105 frames rounded up to a multiple of 8
    for bad in ("x", "-1", "31", "nan", "inf"):
        with pytest.raises(OptionsError, match=TRIM_ENV):
            trim_frames(bad, options)


def test_encoded_frames() -> None:
    options = WhisperFeatureOptions()
    assert encoded_frames(800, options, None) == 3000
    assert encoded_frames(800, options, 200) == 800
    assert encoded_frames(801, options, 200) == 1000
    assert encoded_frames(2999, options, 200) == 3000
    assert encoded_frames(0, options, 200) == 200


def test_bad_setting_fails_before_loading(model_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv(TRIM_ENV, "lots")
    with pytest.raises(OptionsError, match="ASRCTL_GLM_TRIM='lots'"):
        load_adapter(model_dir).audio_encoder("cpu", torch.float32)


def test_passes_group_by_length(model_dir: Path, monkeypatch) -> None:
    encoder = _encoder(model_dir, monkeypatch, "2")
    chunks = [torch.zeros(round(SR * s)) for s in (8.0, 1.0, 7.5, 30.0, 1.5)]
    passes = encoder.passes(chunks)
    assert passes == [([1, 4], 200), ([0, 2], 800), ([3], 3000)]
    monkeypatch.setattr(glm, "WINDOWS_PER_PASS", 1)
    assert encoder.passes(chunks)[0] == ([1, 4], 200)  # 15 windows of 2 s fit 3000 frames
    padded = _encoder(model_dir, monkeypatch, None)
    assert padded.passes(chunks) == [([i], 3000) for i in range(5)]


@torch.no_grad()
def test_bf16_attention_stays_close(model_dir: Path, arrays, monkeypatch) -> None:
    """q, k, v rounded to bfloat16 for the attention only: within bf16's tolerance."""
    encoder = _encoder(model_dir, monkeypatch, None)
    waves = [torch.from_numpy(a) for a in arrays[:3]]
    ref = encoder(waves)
    register_attention()
    encoder.audio_tower.config._attn_implementation = BF16_ATTENTION
    got = encoder(waves)
    assert all(g.dtype == torch.float32 for g in got)
    assert 0 < worst_relative_error(got, ref) < BF16_RTOL
