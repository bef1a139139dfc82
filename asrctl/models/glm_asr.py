"""GLM-ASR-Nano's audio path: Whisper log-mel in 30 s windows → encoder → 4-frame projector.

* Front end: our own batched torch version of transformers' ``WhisperFeatureExtractor``
  (16 kHz, n_fft 400, hop 160, periodic Hann window, centred reflect-padded STFT with the
  last frame dropped, Slaney mel filters 0-8 kHz, ``log10`` clamped at 1e-10, floored at
  the window's maximum − 8, then ``(x + 4) / 4``). Each utterance is cut into 30 s windows
  the way ``GlmAsrProcessor`` does (at most ``max_audio_len // 30`` of them), each window
  zero-padded to 480 000 samples (3000 frames) with a mask of its ``ceil(n / 160)`` valid
  frames.
* Encoder: transformers' ``GlmAsrEncoder`` (conv1/conv2 + GELU, pre-LN layers with partial
  rotary embeddings, final LN), built from ``config.json``'s ``audio_config`` and loaded
  strictly from the checkpoint's ``audio_tower.*`` tensors. It sees the full 3000-frame
  window (no attention mask), as in the reference: transformers' ``get_audio_features``
  and vLLM's ``glmasr`` use ``input_features_mask`` only to count the output rows, so the
  padded frames take part in every layer's attention and change the valid rows.
* Trimmed windows (opt-in, ``$ASRCTL_GLM_TRIM`` = a step in seconds, e.g. ``2``): each
  window is encoded padded only to the next multiple of that step (at most 30 s), windows
  of equal length batched together. That is exactly the original encoder fed a shorter
  zero-padded window (tests/test_glm_asr_trim.py), ~3× less work for 8 s clips, but not
  the original's output: its embeddings differ from the 30 s windows' (see
  ``benchmarks/glm_encoder.py`` and BENCHMARKS.md for the measured error).
* Projector: 4 consecutive frames concatenated, ``linear_1`` → GELU → ``linear_2``; of each
  window only the first ``glm_asr_token_count(valid frames)`` rows are kept, and the
  windows of one utterance are concatenated in order (one prompt per utterance).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asrctl.models.encoder import AudioEncoder
from asrctl.models.padding import pad_short, padded_batch, shortest_input

log = logging.getLogger("asrctl")

ENCODER_PREFIX = "audio_tower."
PROJECTOR_PREFIX = "multi_modal_projector."
MERGE_FACTOR = 4
SKIPPED_KEYS = ("audio_tower.embed_positions.weight",)  # a Whisper leftover, unused
WINDOWS_PER_PASS = 16  # 30 s windows per encoder forward (one 655 s input has 21)
TRIM_ENV = "ASRCTL_GLM_TRIM"  # opt-in: pad windows to a multiple of this many seconds
FRAME_STEP = 2 * MERGE_FACTOR  # mel frames per audio token (conv2's stride 2, merge 4)


@dataclass(frozen=True)
class WhisperFeatureOptions:
    """The fields of ``preprocessor_config.json`` (WhisperFeatureExtractor) we honour."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    feature_size: int = 128
    chunk_length: int = 30  # seconds per window

    @classmethod
    def from_config(cls, conf: Mapping[str, Any]) -> WhisperFeatureOptions:
        return cls(
            sample_rate=int(conf.get("sampling_rate", 16000)),
            n_fft=int(conf.get("n_fft", 400)),
            hop_length=int(conf.get("hop_length", 160)),
            feature_size=int(conf.get("feature_size", 128)),
            chunk_length=int(conf.get("chunk_length", 30)),
        )

    @property
    def window_samples(self) -> int:
        return self.chunk_length * self.sample_rate

    @property
    def window_frames(self) -> int:
        return self.window_samples // self.hop_length

    def max_windows(self, max_audio_seconds: float) -> int:
        """Windows one utterance may have (``GlmAsrProcessor``: ``max_audio_len // 30``)."""
        return max(1, int(max_audio_seconds // self.chunk_length))

    def valid_frames(self, num_samples: int) -> int:
        """Mel frames of a window holding ``num_samples`` samples (its mask's ones)."""
        return -(-num_samples // self.hop_length)


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mel = hz / f_sp
    high = hz >= min_log_hz
    mel[high] = min_log_mel + np.log(hz[high] / min_log_hz) / logstep
    return mel


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    hz = mel * f_sp
    high = mel >= min_log_mel
    hz[high] = min_log_hz * np.exp(logstep * (mel[high] - min_log_mel))
    return hz


def mel_filters(n_fft: int, n_mels: int, sample_rate: int, f_max: float = 8000.0) -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` triangular Slaney-normalised filters on the Slaney scale."""
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges_mel = np.linspace(
        _hz_to_mel_slaney(np.array([0.0]))[0], _hz_to_mel_slaney(np.array([f_max]))[0], n_mels + 2
    )
    edges = _mel_to_hz_slaney(edges_mel)
    widths = np.diff(edges)
    offsets = edges[None, :] - fft_freqs[:, None]  # (bins, n_mels + 2)
    falling = -offsets[:, :-2] / widths[:-1]
    rising = offsets[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(falling, rising))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def log_mel(windows: Tensor, options: WhisperFeatureOptions, filters: Tensor) -> Tensor:
    """Whisper log-mel of ``(B, samples)`` zero-padded windows → ``(B, n_mels, frames)``."""
    window = torch.hann_window(options.n_fft, device=windows.device)
    stft = torch.stft(
        windows, options.n_fft, options.hop_length, window=window, return_complex=True
    )
    power = (stft[..., :-1].abs() ** 2).contiguous()
    mel = filters.T @ power
    logm = torch.clamp(mel, min=1e-10).log10()
    peak = logm.amax(dim=(1, 2), keepdim=True)
    logm = torch.maximum(logm, peak - 8.0)
    return (logm + 4.0) / 4.0


def split_windows(n_samples: int, window: int, max_windows: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each 30 s window, as ``GlmAsrProcessor`` cuts (and truncates)."""
    n_win = min(max(1, -(-n_samples // window)), max_windows)
    cap = min(n_samples, n_win * window)
    return [(i * window, min((i + 1) * window, cap)) for i in range(n_win)]


def glm_asr_token_count(frames: int) -> int:
    """Audio tokens of ``frames`` valid mel frames: conv1 (k3 p1), conv2 (k3 s2 p1), merge 4."""
    after_conv1 = frames  # (L + 2 - 2 - 1) // 1 + 1
    after_conv2 = (after_conv1 - 1) // 2 + 1
    return max(0, (after_conv2 - MERGE_FACTOR) // MERGE_FACTOR + 1)


def audio_positions(
    num_samples: int, options: WhisperFeatureOptions, max_audio_seconds: float
) -> int:
    """Audio embeddings :class:`GlmAsrAudio` gives for ``num_samples`` samples: the tokens
    of each (possibly truncated) 30 s window's valid frames, summed; a clip shorter than
    one embedding's worth counts as padded to it."""
    max_windows = options.max_windows(max_audio_seconds)
    num_samples = max(num_samples, min_samples(options))
    spans = split_windows(num_samples, options.window_samples, max_windows)
    return sum(glm_asr_token_count(options.valid_frames(end - start)) for start, end in spans)


@functools.lru_cache(maxsize=16)
def min_samples(options: WhisperFeatureOptions) -> int:
    """Shorter clips are zero-padded to this (see :mod:`asrctl.models.padding`)."""
    return shortest_input(lambda n: glm_asr_token_count(options.valid_frames(n)))


def trim_frames(value: str | None, options: WhisperFeatureOptions) -> int | None:
    """``$ASRCTL_GLM_TRIM`` (seconds) as mel frames, a multiple of :data:`FRAME_STEP`;
    None (unset, empty or 0) keeps the original 30 s windows."""
    from asrctl.errors import OptionsError

    text = (value or "").strip()
    try:
        seconds = float(text or 0)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= options.chunk_length:
        raise OptionsError(
            f"{TRIM_ENV}={text!r}: give seconds between 0 (off) and {options.chunk_length}"
        )
    if seconds == 0:
        return None
    frames = seconds * options.sample_rate / options.hop_length
    return max(FRAME_STEP, -(-math.ceil(frames) // FRAME_STEP) * FRAME_STEP)


def encoded_frames(valid: int, options: WhisperFeatureOptions, step: int | None) -> int:
    """Mel frames the encoder sees for a window of ``valid`` frames: the whole window, or
    with trimming the valid frames rounded up to a multiple of ``step``."""
    if step is None:
        return options.window_frames
    return min(options.window_frames, -(-max(valid, 1) // step) * step)


class GlmAsrProjector(nn.Module):
    """``multi_modal_projector``: Linear(4·audio hidden, 2·llm) → GELU → Linear(→ llm)."""

    def __init__(self, in_dim: int, mid_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, mid_dim)
        self.linear_2 = nn.Linear(mid_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(nn.functional.gelu(self.linear_1(x)))


BF16_ATTENTION = "asrctl_sdpa_bf16"  # attention in bfloat16 inside a float32 encoder


def sdpa_bf16(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """transformers' SDPA attention on bfloat16 copies of q, k, v (flash attention on a
    GPU, which has no float32 kernel), the output cast back: for a float32/TF32 encoder
    whose attention would otherwise run in float32 (see benchmarks/glm_encoder.py)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    half = torch.bfloat16
    out, weights = sdpa_attention_forward(
        module, query.to(half), key.to(half), value.to(half), attention_mask, **kwargs
    )
    return out.to(query.dtype), weights


def register_attention() -> None:
    """Make :data:`BF16_ATTENTION` a valid ``config._attn_implementation``."""
    from transformers import AttentionInterface

    AttentionInterface.register(BF16_ATTENTION, sdpa_bf16)


def build_encoder(audio_config: Mapping[str, Any]) -> nn.Module:
    """transformers' ``GlmAsrEncoder`` for ``config.json``'s ``audio_config`` (sdpa)."""
    from transformers import GlmAsrEncoder, GlmAsrEncoderConfig

    skip_init: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
    try:  # skip the random initialisation: every weight is loaded right after
        from transformers.initialization import no_init_weights as skip_init
    except ImportError:
        pass

    conf = {k: v for k, v in audio_config.items() if k != "model_type"}
    config = GlmAsrEncoderConfig(**conf)
    config._attn_implementation = "sdpa"
    with skip_init():
        return GlmAsrEncoder(config)


class GlmAsrAudio(nn.Module, AudioEncoder):
    """Waveforms (16 kHz float in [-1, 1]) → the audio embeddings GLM-ASR splices in."""

    def __init__(
        self,
        config: Mapping[str, Any],
        features: WhisperFeatureOptions,
        llm_hidden: int,
        projector_mid: int,
        max_audio_seconds: float,
        trim: int | None = None,
    ) -> None:
        super().__init__()
        self.options = features
        self.trim = trim  # None: 30 s windows (the original); else a step in mel frames
        self.max_windows = features.max_windows(max_audio_seconds)
        audio = config["audio_config"]
        self.audio_hidden = int(audio["hidden_size"])
        self.audio_tower = build_encoder(audio)
        self.multi_modal_projector = GlmAsrProjector(
            int(audio["intermediate_size"]), projector_mid, llm_hidden
        )
        # Kept out of the module's buffers so that .to(dtype) never rounds them.
        self._filters = torch.from_numpy(
            mel_filters(features.n_fft, features.feature_size, features.sample_rate)
        ).float()

    @classmethod
    def from_checkpoint(
        cls,
        config: Mapping[str, Any],
        features: WhisperFeatureOptions,
        state: Mapping[str, Tensor],
        *,
        max_audio_seconds: float,
        device: str,
        dtype: torch.dtype,
        trim: int | None = None,
    ) -> GlmAsrAudio:
        """Build from config.json and the ``audio_tower.*`` / ``multi_modal_projector.*``
        tensors of model.safetensors (strict: every key must land); ``trim``: see
        :func:`trim_frames`."""
        mid, in_dim = state[PROJECTOR_PREFIX + "linear_1.weight"].shape
        hidden = state[PROJECTOR_PREFIX + "linear_2.weight"].shape[0]
        if in_dim != int(config["audio_config"]["intermediate_size"]):
            raise ValueError(
                f"multi_modal_projector.linear_1 takes {in_dim} inputs, but "
                f"audio_config.intermediate_size is {config['audio_config']['intermediate_size']}"
            )
        model = cls(config, features, hidden, mid, max_audio_seconds, trim)
        enc = {
            k[len(ENCODER_PREFIX) :]: v
            for k, v in state.items()
            if k.startswith(ENCODER_PREFIX) and k not in SKIPPED_KEYS
        }
        proj = {
            k[len(PROJECTOR_PREFIX) :]: v
            for k, v in state.items()
            if k.startswith(PROJECTOR_PREFIX)
        }
        model.audio_tower.load_state_dict(enc, strict=True)
        model.multi_modal_projector.load_state_dict(proj, strict=True)
        return model.to(device=device, dtype=dtype).eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def filters(self) -> Tensor:
        if self._filters.device != self.device:
            self._filters = self._filters.to(self.device)
        return self._filters

    def windows(self, waves: Sequence[Tensor]) -> tuple[list[Tensor], list[int]]:
        """Every utterance's 30 s windows (unpadded, in order) and how many each has."""
        size = self.options.window_samples
        chunks, per_utt = [], []
        for wave in pad_short(waves, min_samples(self.options)):
            spans = split_windows(len(wave), size, self.max_windows)
            if spans[-1][1] < len(wave):
                log.warning(
                    "audio of %.1f s truncated to its first %d s (the model's %d windows of %d s)",
                    len(wave) / self.options.sample_rate,
                    len(spans) * self.options.chunk_length,
                    self.max_windows,
                    self.options.chunk_length,
                )
            chunks += [wave[start:end] for start, end in spans]
            per_utt.append(len(spans))
        return chunks, per_utt

    def window_features(
        self, chunks: Sequence[Tensor], frames: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(W, n_mels, frames)`` log-mel of zero-padded windows and their ``(W, frames)``
        masks; ``frames`` defaults to the whole window (3000). Fewer frames are the first
        ``frames`` of the whole window's log-mel, exactly: the signal is padded far enough
        that no STFT frame before ``frames`` reaches its end, and the frames cut off hold
        only padding (the floor) or the same audio, so the peak is the same."""
        full = self.options.window_frames
        frames = full if frames is None else min(frames, full)
        hop = self.options.hop_length
        samples = min(self.options.window_samples, (frames + 4) * hop + self.options.n_fft)
        batch = padded_batch(chunks, self.device, samples)
        feats = log_mel(batch, self.options, self.filters())[..., :frames]
        valid = torch.tensor([self.options.valid_frames(len(c)) for c in chunks])
        mask = torch.arange(frames)[None, :] < valid[:, None]
        return feats, mask.long().to(self.device)

    def embed_features(self, feats: Tensor, mask: Tensor) -> list[Tensor]:
        """Audio embeddings of each window (its valid rows only); ``feats`` may hold fewer
        frames than the window (trimmed), a multiple of :data:`FRAME_STEP`."""
        dtype = next(self.parameters()).dtype
        hidden = self.audio_tower(feats.to(dtype)).last_hidden_state
        merged = hidden.reshape(hidden.shape[0], -1, self.audio_hidden * MERGE_FACTOR)
        out = self.multi_modal_projector(merged)
        counts = [glm_asr_token_count(int(n)) for n in mask.sum(-1).tolist()]
        return [out[i, :n] for i, n in enumerate(counts)]

    def passes(self, chunks: Sequence[Tensor]) -> list[tuple[list[int], int]]:
        """Encoder forwards: ``(window indices, frames)`` each. 30 s windows in order,
        :data:`WINDOWS_PER_PASS` at a time; trimmed windows grouped by their length, as
        many per forward as fit the same number of frames."""
        if self.trim is None:
            n, frames = len(chunks), self.options.window_frames
            return [
                (list(range(i, min(i + WINDOWS_PER_PASS, n))), frames)
                for i in range(0, n, WINDOWS_PER_PASS)
            ]
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(chunks):
            valid = self.options.valid_frames(len(c))
            groups.setdefault(encoded_frames(valid, self.options, self.trim), []).append(i)
        out = []
        for frames, idx in sorted(groups.items()):
            per = max(1, WINDOWS_PER_PASS * self.options.window_frames // frames)
            out += [(idx[i : i + per], frames) for i in range(0, len(idx), per)]
        return out

    def forward(self, waves: Sequence[Tensor]) -> list[Tensor]:
        chunks, per_utt = self.windows(waves)
        per_window: list[Tensor] = [torch.empty(0)] * len(chunks)
        for idx, frames in self.passes(chunks):  # bounds activation memory
            feats, mask = self.window_features([chunks[i] for i in idx], frames)
            for i, emb in zip(idx, self.embed_features(feats, mask), strict=True):
                per_window[i] = emb
        out, at = [], 0
        for n in per_utt:
            out.append(torch.cat(per_window[at : at + n]))
            at += n
        return out
