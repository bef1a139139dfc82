"""Fun-ASR-Nano's audio path: fbank → LFR → SenseVoice encoder → adaptor → audio tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from asrctl.adapters.base import AudioEncoder
from asrctl.features import FbankOptions, apply_lfr, fbank, lfr_length, num_frames
from asrctl.models.funasr_adaptor import (
    FunAsrAdaptor,
    FunAsrAdaptorConfig,
    adaptor_length,
    fun_asr_audio_token_count,
)
from asrctl.models.sensevoice import SenseVoiceEncoder, SenseVoiceEncoderConfig

ENCODER_PREFIX = "audio_encoder."
ADAPTOR_PREFIX = "audio_adaptor."


def frontend_options(conf: Mapping[str, Any]) -> FbankOptions:
    """FunASR's WavFrontend as configured: int16-scaled samples, dither forced to 0."""
    return FbankOptions(
        sample_rate=int(conf.get("fs", 16000)),
        num_mel_bins=int(conf.get("n_mels", 80)),
        frame_length_ms=float(conf.get("frame_length", 25)),
        frame_shift_ms=float(conf.get("frame_shift", 10)),
        window=str(conf.get("window", "hamming")),
        dither=0.0,
        scale_to_int16=True,
    )


def lfr_options(conf: Mapping[str, Any]) -> tuple[int, int]:
    """``(lfr_m, lfr_n)`` of ``frontend_conf``: frames stacked, frames advanced."""
    return int(conf.get("lfr_m", 7)), int(conf.get("lfr_n", 6))


def spliced_count(adaptor_frames: int, low_frame_rate: bool) -> int:
    """Adaptor frames spliced into the prompt (all, or about a quarter with low frame rate)."""
    return fun_asr_audio_token_count(adaptor_frames) if low_frame_rate else adaptor_frames


def audio_positions(config: Mapping[str, Any], num_samples: int) -> int:
    """Audio embeddings :class:`FunAsrNanoAudio` gives for ``num_samples`` samples:
    fbank frames → LFR frames → adaptor frames → the spliced count (no weights needed)."""
    front = config.get("frontend_conf", {})
    frames = num_frames(num_samples, frontend_options(front))
    lfr = lfr_length(frames, lfr_options(front)[1])
    adaptor = FunAsrAdaptorConfig.from_conf(config["audio_adaptor_conf"])
    out = adaptor_length(lfr, adaptor.downsample_rate)
    return max(0, spliced_count(out, adaptor.use_low_frame_rate))


def _sub_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}


class FunAsrNanoAudio(nn.Module, AudioEncoder):
    """Waveforms (16 kHz float) → the audio embeddings FunASR splices into the prompt."""

    def __init__(self, config: Mapping[str, Any], llm_hidden: int | None = None) -> None:
        super().__init__()
        front = config.get("frontend_conf", {})
        self.fbank_options = frontend_options(front)
        self.lfr_m, self.lfr_n = lfr_options(front)
        enc_conf = SenseVoiceEncoderConfig.from_conf(
            config["audio_encoder_conf"], input_size=self.fbank_options.num_mel_bins * self.lfr_m
        )
        adp_conf = replace(
            FunAsrAdaptorConfig.from_conf(config["audio_adaptor_conf"]),
            encoder_dim=enc_conf.output_size,
        )
        if llm_hidden is not None:
            adp_conf = replace(adp_conf, llm_dim=llm_hidden)
        self.low_frame_rate = adp_conf.use_low_frame_rate
        self.audio_encoder = SenseVoiceEncoder(enc_conf)
        self.audio_adaptor = FunAsrAdaptor(adp_conf)

    @classmethod
    def from_checkpoint(
        cls,
        config: Mapping[str, Any],
        state: Mapping[str, Tensor],
        *,
        device: str,
        dtype: torch.dtype,
    ) -> FunAsrNanoAudio:
        """Build from config.yaml and model.pt's state dict (strict key match)."""
        hidden = state[ADAPTOR_PREFIX + "linear2.weight"].shape[0]
        model = cls(config, llm_hidden=hidden)
        model.audio_encoder.load_state_dict(_sub_state(state, ENCODER_PREFIX), strict=True)
        model.audio_adaptor.load_state_dict(_sub_state(state, ADAPTOR_PREFIX), strict=True)
        return model.to(device=device, dtype=dtype).eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def features(self, waves: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """LFR-stacked fbank features ``(B, L, 560)`` and their lengths."""
        lengths = torch.tensor([len(w) for w in waves], device=self.device)
        batch = nn.utils.rnn.pad_sequence(
            [w.to(self.device, torch.float32) for w in waves], batch_first=True
        )
        feats, frames = fbank(batch, lengths, self.fbank_options)
        return apply_lfr(feats, frames, self.lfr_m, self.lfr_n)

    def forward(self, waves: Sequence[Tensor]) -> list[Tensor]:
        feats, lengths = self.features(waves)
        dtype = next(self.parameters()).dtype
        enc, enc_lens = self.audio_encoder(feats.to(dtype), lengths)
        out, out_lens = self.audio_adaptor(enc, enc_lens)
        counts = [spliced_count(int(n), self.low_frame_rate) for n in out_lens.tolist()]
        return [out[i, :n] for i, n in enumerate(counts)]
