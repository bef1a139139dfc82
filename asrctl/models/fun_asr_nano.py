"""Fun-ASR-Nano's audio path: fbank → LFR → SenseVoice encoder → adaptor → audio tokens.

With the CTC head of the ModelScope checkpoint (``asrctl.models.fun_asr_ctc``), the same
encoder output also goes through ``ctc_decoder``; its compact frames are returned by
:meth:`FunAsrNanoAudio.encode` and turned into word times by :meth:`word_times` once the
LLM's text is known.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asrctl.models.ctc_tokenizer import CtcTokenizer
from asrctl.models.ctc_words import word_times
from asrctl.models.encoder import AudioEncoder
from asrctl.models.features import FbankOptions, apply_lfr, fbank, lfr_length, num_frames
from asrctl.models.fun_asr_ctc import CtcFrames, FunAsrCtcHead
from asrctl.models.funasr_adaptor import (
    FunAsrAdaptor,
    FunAsrAdaptorConfig,
    adaptor_length,
    fun_asr_audio_token_count,
)
from asrctl.models.graphs import GRAPH_BUDGET_FACTOR, GRAPH_PASS_SECONDS, Buckets, GraphedCore
from asrctl.models.padding import pad_short, padded_batch, shortest_input
from asrctl.models.sensevoice import SenseVoiceEncoder, SenseVoiceEncoderConfig
from asrctl.results import Word

log = logging.getLogger("asrctl")

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


@dataclass(frozen=True)
class LengthShape:
    """What the audio-embedding count depends on (hashable, for the cached minimum)."""

    fbank: FbankOptions
    lfr_n: int
    downsample_rate: int
    low_frame_rate: bool

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> LengthShape:
        front = config.get("frontend_conf", {})
        adaptor = FunAsrAdaptorConfig.from_conf(config["audio_adaptor_conf"])
        return cls(
            frontend_options(front),
            lfr_options(front)[1],
            adaptor.downsample_rate,
            adaptor.use_low_frame_rate,
        )

    def unpadded_positions(self, num_samples: int) -> int:
        """fbank frames → LFR frames → adaptor frames → the spliced count."""
        lfr = lfr_length(num_frames(num_samples, self.fbank), self.lfr_n)
        out = adaptor_length(lfr, self.downsample_rate)
        return max(0, spliced_count(out, self.low_frame_rate))


@functools.lru_cache(maxsize=16)
def min_samples(shape: LengthShape) -> int:
    """Shorter clips are zero-padded to this (see :mod:`asrctl.models.padding`)."""
    return shortest_input(shape.unpadded_positions)


def audio_positions(config: Mapping[str, Any], num_samples: int) -> int:
    """Audio embeddings :class:`FunAsrNanoAudio` gives for ``num_samples`` samples (no
    weights needed), counting a clip shorter than one embedding's worth as padded."""
    shape = LengthShape.of(config)
    return shape.unpadded_positions(max(num_samples, min_samples(shape)))


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
        self.min_samples = min_samples(
            LengthShape(
                self.fbank_options, self.lfr_n, adp_conf.downsample_rate, self.low_frame_rate
            )
        )
        self.audio_encoder = SenseVoiceEncoder(enc_conf)
        self.audio_adaptor = FunAsrAdaptor(adp_conf)
        self.ctc_head: FunAsrCtcHead | None = None
        self.ctc_tokenizer: CtcTokenizer | None = None
        self.graphs: GraphedCore | None = None

    @classmethod
    def from_checkpoint(
        cls,
        config: Mapping[str, Any],
        state: Mapping[str, Tensor],
        *,
        device: str,
        dtype: torch.dtype,
        model_dir: Path | None = None,
    ) -> FunAsrNanoAudio:
        """Build from config.yaml and model.pt's state dict (strict key match); with
        ``model_dir``, also the CTC head for word timestamps when the checkpoint has one."""
        hidden = state[ADAPTOR_PREFIX + "linear2.weight"].shape[0]
        model = cls(config, llm_hidden=hidden)
        model.audio_encoder.load_state_dict(_sub_state(state, ENCODER_PREFIX), strict=True)
        model.audio_adaptor.load_state_dict(_sub_state(state, ADAPTOR_PREFIX), strict=True)
        model = model.to(device=device, dtype=dtype).eval()
        if model_dir is not None:
            model.attach_ctc(config, state, model_dir, device=device, dtype=dtype)
        return model

    def attach_ctc(
        self,
        config: Mapping[str, Any],
        state: Mapping[str, Tensor],
        model_dir: Path,
        *,
        device: str,
        dtype: torch.dtype,
    ) -> None:
        """Load the CTC head and its tokenizer when the checkpoint has both (word timing)."""
        encoder_dim = self.audio_adaptor.config.encoder_dim
        head = FunAsrCtcHead.from_checkpoint(
            config, state, encoder_dim=encoder_dim, device=device, dtype=dtype
        )
        tokenizer = CtcTokenizer.from_model_dir(model_dir, config) if head is not None else None
        if head is not None and tokenizer is None:
            log.warning("the CTC head has no multilingual.tiktoken: word timestamps are off")
        if head is not None and tokenizer is not None:
            self.ctc_head, self.ctc_tokenizer = head, tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def features(self, waves: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """LFR-stacked fbank features ``(B, L, 560)`` and their lengths (clips shorter than
        one embedding's worth zero-padded: :mod:`asrctl.models.padding`)."""
        waves = pad_short(waves, self.min_samples)
        lengths = torch.tensor([len(w) for w in waves], device=self.device)
        batch = padded_batch(waves, self.device)
        feats, frames = fbank(batch, lengths, self.fbank_options)
        return apply_lfr(feats, frames, self.lfr_m, self.lfr_n)

    @property
    def word_timing(self) -> bool:
        return self.ctc_head is not None

    def use_graphs(self, budget_samples: int | None) -> bool:
        if self.device.type != "cuda":
            return False
        self.graphs = GraphedCore(
            self._core,
            self.graph_buckets(budget_samples),
            feature_dim=self.audio_encoder.config.input_size,
            dtype=self.audio_encoder.after_norm.weight.dtype,
            device=self.device,
        )
        return True

    def graph_buckets(self, budget_samples: int | None) -> Buckets:
        """The shapes graphs are captured for: passes of up to ``budget_samples`` padded
        samples (None: no limit) and :data:`GRAPH_PASS_SECONDS`, in LFR frames, with room
        for rounding up."""
        graphed = int(GRAPH_PASS_SECONDS * self.fbank_options.sample_rate)
        graphed = graphed if budget_samples is None else min(budget_samples, graphed)
        frames = lfr_length(num_frames(graphed, self.fbank_options), self.lfr_n)
        return Buckets(cells=GRAPH_BUDGET_FACTOR * frames)

    def _core(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder and adaptor: LFR features (B, T, 560) -> embeddings and their counts."""
        return self.audio_adaptor(*self.audio_encoder(feats, lengths))

    def forward(self, waves: Sequence[Tensor]) -> list[Tensor]:
        return self.encode(waves)[0]

    def encode(
        self, waves: Sequence[Tensor], *, timing: bool = False
    ) -> tuple[list[Tensor], list[object] | None]:
        feats, lengths = self.features(waves)
        feats = feats.to(self.audio_encoder.after_norm.weight.dtype)
        timed = timing and self.ctc_head is not None
        if self.graphs is not None and not timed:  # the CTC head needs the encoder's output
            out, out_lens = self.graphs(feats, lengths)
            return self._embeddings(out, out_lens), None
        enc, enc_lens = self.audio_encoder(feats, lengths)
        out, out_lens = self.audio_adaptor(enc, enc_lens)
        embeds = self._embeddings(out, out_lens)
        if not timed:
            return embeds, None
        assert self.ctc_head is not None
        frames: list[object] = [f.to("cpu") for f in self.ctc_head(enc, enc_lens)]
        return embeds, frames

    def _embeddings(self, out: Tensor, out_lens: Tensor) -> list[Tensor]:
        """Each utterance's embeddings from the adaptor's padded output."""
        counts = [spliced_count(int(n), self.low_frame_rate) for n in out_lens.tolist()]
        return [out[i, :n] for i, n in enumerate(counts)]

    def word_times(self, texts: Sequence[str], timing: Sequence[object]) -> list[list[Word]]:
        """Force-align each text's CTC tokens to its frames, in one batch; words in seconds."""
        head, tokenizer = self.ctc_head, self.ctc_tokenizer
        if head is None or tokenizer is None:
            raise RuntimeError("this checkpoint has no CTC head: no word timestamps")
        frames = [f for f in timing if isinstance(f, CtcFrames)]
        if len(frames) != len(texts):
            raise ValueError("word_times needs the CtcFrames of FunAsrNanoAudio.encode")
        with torch.inference_mode():
            spans = head.align(frames, [tokenizer.encode(t) for t in texts])
        return [
            [
                Word(w.word, w.start, w.end, round(w.score, 3))
                for w in word_times(text, tokenizer, s)
            ]
            for text, s in zip(texts, spans, strict=True)
        ]
