"""Audio adaptor of Fun-ASR-Nano (FunASR's ``Transformer`` adaptor), for inference.

Written from the architecture, not copied; ``tests/test_funasr_parity.py`` proves it equals
funasr 1.4.16 in fp32. Layout (attribute names give the official ``audio_adaptor.*`` keys):

* stack every k = downsample_rate encoder frames into one (zero-padding the tail to a multiple
  of k), so T frames become ceil(T / k) and lengths become (lengths - 1) // k + 1;
* ``linear1`` (encoder_dim*k -> ffn_dim), ReLU, ``linear2`` (ffn_dim -> llm_dim);
* ``blocks``: n_layer pre-norm transformer layers of width llm_dim, each
  ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``, with separate ``linear_q/k/v/out``
  projections, ``attention_heads`` heads (8 unless configured), a ReLU feed-forward
  llm_dim -> llm_dim // 4 -> llm_dim (``ffn_dim`` is NOT used here) and LayerNorm eps 1e-12.
  There is no final norm.

Masks: funasr passes the key-padding mask of the output lengths to every block, so padded
frames never act as keys, and the valid frames of a padded batch equal the utterance alone.
With k > 1, funasr would stack a shorter utterance's padded encoder frames (garbage) into its
last chunk; this module zeroes them first, which is what funasr computes for the utterance
alone. With k = 1 (Fun-ASR-Nano) the two are identical.

Only the first ``fun_asr_audio_token_count(L)`` output frames are spliced into the LLM prompt
when ``use_low_frame_rate`` is set; the rest carry no tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, overload

import torch.nn.functional as F
from torch import Tensor, nn

from asrctl.models.sensevoice import FeedForward, masked_attention, split_heads, valid_frames

__all__ = ["FunAsrAdaptor", "FunAsrAdaptorConfig", "adaptor_length", "fun_asr_audio_token_count"]

LAYER_NORM_EPS = 1e-12  # funasr.models.transformer.layer_norm.LayerNorm


def fun_asr_audio_token_count(lfr_frames: int) -> int:
    """Audio tokens Fun-ASR-Nano splices into the prompt for ``lfr_frames`` LFR frames.

    Three stride-2 halvings (kernel 3, padding 1), about ceil(L / 8): 17 -> 3, 47 -> 6.
    """
    olens = 1 + (lfr_frames - 3 + 2) // 2
    olens = 1 + (olens - 3 + 2) // 2
    return (olens - 1) // 2 + 1


@overload
def adaptor_length(encoder_frames: int, downsample_rate: int) -> int: ...
@overload
def adaptor_length(encoder_frames: Tensor, downsample_rate: int) -> Tensor: ...
def adaptor_length(encoder_frames: int | Tensor, downsample_rate: int) -> int | Tensor:
    """Adaptor output frames for ``encoder_frames``: ``(T - 1) // k + 1`` (k frames stacked)."""
    return (encoder_frames - 1) // downsample_rate + 1


@dataclass(frozen=True)
class FunAsrAdaptorConfig:
    """Shape of the adaptor; defaults are those of funasr's ``Transformer`` adaptor.

    Attributes:
        encoder_dim: Encoder output width (funasr overrides the yaml with the encoder's).
        llm_dim: LLM hidden size (funasr overrides the yaml with the LLM's embedding width).
        ffn_dim: Hidden size between ``linear1`` and ``linear2``.
        downsample_rate: Frames stacked into one (k).
        n_layer: Transformer blocks after the projection.
        attention_heads: Heads of each block's attention.
        use_low_frame_rate: Splice only ``fun_asr_audio_token_count(L)`` frames (not used here).
    """

    encoder_dim: int = 1280
    llm_dim: int = 4096
    ffn_dim: int = 2048
    downsample_rate: int = 2
    n_layer: int = 2
    attention_heads: int = 8
    use_low_frame_rate: bool = False

    def __post_init__(self) -> None:
        if self.downsample_rate < 1:
            raise ValueError(f"downsample_rate must be at least 1, got {self.downsample_rate}")
        if self.llm_dim % self.attention_heads:
            raise ValueError("llm_dim must be divisible by attention_heads")

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> FunAsrAdaptorConfig:
        """Read ``audio_adaptor_conf`` from the official ``config.yaml``; other keys are ignored.

        Like funasr, callers should replace ``encoder_dim`` by the encoder's ``output_size``
        and ``llm_dim`` by the LLM's hidden size (``dataclasses.replace``) when they differ.
        """
        defaults = cls()
        return cls(
            encoder_dim=int(conf.get("encoder_dim", defaults.encoder_dim)),
            llm_dim=int(conf.get("llm_dim", defaults.llm_dim)),
            ffn_dim=int(conf.get("ffn_dim", defaults.ffn_dim)),
            downsample_rate=int(conf.get("downsample_rate", defaults.downsample_rate)),
            n_layer=int(conf.get("n_layer", defaults.n_layer)),
            attention_heads=int(conf.get("attention_heads", defaults.attention_heads)),
            use_low_frame_rate=bool(conf.get("use_low_frame_rate", defaults.use_low_frame_rate)),
        )


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v and output projections."""

    def __init__(self, size: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.linear_q = nn.Linear(size, size)
        self.linear_k = nn.Linear(size, size)
        self.linear_v = nn.Linear(size, size)
        self.linear_out = nn.Linear(size, size)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x (B, T, size), valid (B, T) -> (B, T, size)."""
        projections = (self.linear_q(x), self.linear_k(x), self.linear_v(x))
        q, k, v = (split_heads(t, self.heads) for t in projections)
        return self.linear_out(masked_attention(q, k, v, valid))


class AdaptorBlock(nn.Module):
    """Pre-norm transformer encoder layer with a llm_dim // 4 ReLU feed-forward."""

    def __init__(self, size: int, heads: int) -> None:
        super().__init__()
        self.self_attn = SelfAttention(size, heads)
        self.feed_forward = FeedForward(size, size // 4)
        self.norm1 = nn.LayerNorm(size, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(size, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x (B, T, size), valid (B, T) -> (B, T, size)."""
        x = x + self.self_attn(self.norm1(x), valid)
        return x + self.feed_forward(self.norm2(x))


class FunAsrAdaptor(nn.Module):
    """FunASR ``Transformer`` audio adaptor (inference only; dropout omitted)."""

    def __init__(self, config: FunAsrAdaptorConfig) -> None:
        super().__init__()
        self.config = config
        k = config.downsample_rate
        self.linear1 = nn.Linear(config.encoder_dim * k, config.ffn_dim)
        self.linear2 = nn.Linear(config.ffn_dim, config.llm_dim)
        self.blocks = nn.ModuleList(
            [AdaptorBlock(config.llm_dim, config.attention_heads) for _ in range(config.n_layer)]
        )

    def forward(self, xs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Project encoder frames to LLM embeddings.

        Args:
            xs: (B, T, encoder_dim) encoder output, right-padded.
            lengths: (B,) valid frames per utterance, each in [1, T].

        Returns:
            (B, ceil(T / k), llm_dim) embeddings (padded frames hold garbage) and the
            (B,) output lengths ``(lengths - 1) // k + 1``.
        """
        lengths = lengths.to(xs.device)
        out_lengths = adaptor_length(lengths, self.config.downsample_rate)
        x = self._stack_frames(xs, lengths)
        x = self.linear2(F.relu(self.linear1(x)))
        valid = valid_frames(out_lengths, x.shape[1])
        for block in self.blocks:
            x = block(x, valid)
        return x, out_lengths

    def _stack_frames(self, xs: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, D) -> (B, ceil(T / k), D * k), padded frames and the tail zeroed."""
        k = self.config.downsample_rate
        if k == 1:
            return xs
        batch, time, dim = xs.shape
        chunks = (time - 1) // k + 1
        xs = xs * valid_frames(lengths, time).unsqueeze(-1).to(xs.dtype)
        xs = F.pad(xs, (0, 0, 0, chunks * k - time))
        return xs.reshape(batch, chunks, dim * k)
