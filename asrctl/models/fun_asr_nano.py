"""Fun-ASR-Nano's audio path: fbank → LFR → SenseVoice encoder → adaptor → audio tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from asrctl.adapters.base import AudioEncoder
from asrctl.features import FbankOptions, apply_lfr, fbank
from asrctl.models.funasr_adaptor import (
    FunAsrAdaptor,
    FunAsrAdaptorConfig,
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


def _sub_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}


class FunAsrNanoAudio(nn.Module, AudioEncoder):
    """Waveforms (16 kHz float) → the audio embeddings FunASR splices into the prompt."""

    def __init__(self, config: Mapping[str, Any], llm_hidden: int | None = None) -> None:
        super().__init__()
        front = config.get("frontend_conf", {})
        self.fbank_options = frontend_options(front)
        self.lfr_m, self.lfr_n = int(front.get("lfr_m", 7)), int(front.get("lfr_n", 6))
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
        counts = [
            fun_asr_audio_token_count(int(n)) if self.low_frame_rate else int(n)
            for n in out_lens.tolist()
        ]
        return [out[i, :n] for i, n in enumerate(counts)]
