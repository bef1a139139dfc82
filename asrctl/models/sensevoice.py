"""SAN-M audio encoder of Fun-ASR-Nano (FunASR's ``SenseVoiceEncoderSmall``), for inference.

Written from the architecture, not copied; ``tests/test_funasr_parity.py`` proves it equals
funasr 1.4.16 in fp32. Layout (attribute names give the official ``audio_encoder.*`` keys):

* input (B, T, input_size) is multiplied by sqrt(output_size), then sinusoidal positions
  1..T of depth ``input_size`` are added (sin half, then cos half);
* ``encoders0``: one SAN-M layer input_size -> output_size, with no residual around attention
  (funasr adds that residual only when the layer's input and output sizes are equal);
* ``encoders``: num_blocks - 1 SAN-M layers, then ``after_norm``;
* ``tp_encoders``: tp_blocks SAN-M layers, then ``tp_norm``.

A SAN-M layer is pre-norm (funasr ignores ``normalize_before`` here and always normalises
first): ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``. The attention projects q, k and v
with one fused ``linear_q_k_v``. Its output is ``linear_out(softmax(q k^T / sqrt(d_k)) v)`` plus
an FSMN memory: a depthwise convolution over v (zero-padded (k-1)//2 + sanm_shift frames on the
left) plus v itself. Padded frames are excluded as attention keys and zeroed before and after
the FSMN, so the valid frames of a padded batch equal the same utterance encoded alone.
LayerNorms use eps 1e-5 and are computed in fp32. Outputs at padded frames are unspecified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FeedForward",
    "SenseVoiceEncoder",
    "SenseVoiceEncoderConfig",
    "masked_attention",
    "sinusoidal_positions",
    "split_heads",
    "valid_frames",
]


@dataclass(frozen=True)
class SenseVoiceEncoderConfig:
    """Shape of the encoder; defaults are those of funasr's ``SenseVoiceEncoderSmall``.

    Attributes:
        input_size: Feature size per frame (80 mels x 7 stacked LFR frames = 560).
        output_size: Model width (512 in Fun-ASR-Nano).
        attention_heads: Heads of every SAN-M attention.
        linear_units: Hidden size of the ReLU feed-forward blocks.
        num_blocks: Layers before ``after_norm``, counting ``encoders0``.
        tp_blocks: Layers after ``after_norm`` (``tp_encoders``).
        kernel_size: Width of the FSMN depthwise convolution.
        sanm_shift: Extra left padding of the FSMN (config key ``sanm_shfit``, sic).
        normalize_before: Recorded only: funasr's layers are always pre-norm.
    """

    input_size: int = 560
    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 6
    tp_blocks: int = 0
    kernel_size: int = 11
    sanm_shift: int = 0
    normalize_before: bool = True

    def __post_init__(self) -> None:
        if self.input_size % 2:
            raise ValueError(f"input_size must be even for the positions, got {self.input_size}")
        if self.output_size % self.attention_heads:
            raise ValueError("output_size must be divisible by attention_heads")
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {self.num_blocks}")
        if not 0 <= self.sanm_shift <= self.kernel_size // 2:
            raise ValueError(f"sanm_shift must lie in [0, kernel_size // 2], got {self.sanm_shift}")

    @classmethod
    def from_conf(
        cls, conf: Mapping[str, Any], input_size: int | None = None
    ) -> SenseVoiceEncoderConfig:
        """Read ``audio_encoder_conf`` from the official ``config.yaml``; other keys are ignored.

        ``input_size`` is the frontend's output size (n_mels x lfr_m); funasr passes it
        separately, so it defaults to ``conf["input_size"]`` and then to 560.
        """
        defaults = cls()
        return cls(
            input_size=int(input_size or conf.get("input_size", defaults.input_size)),
            output_size=int(conf.get("output_size", defaults.output_size)),
            attention_heads=int(conf.get("attention_heads", defaults.attention_heads)),
            linear_units=int(conf.get("linear_units", defaults.linear_units)),
            num_blocks=int(conf.get("num_blocks", defaults.num_blocks)),
            tp_blocks=int(conf.get("tp_blocks", defaults.tp_blocks)),
            kernel_size=int(conf.get("kernel_size", defaults.kernel_size)),
            sanm_shift=int(conf.get("sanm_shfit", defaults.sanm_shift)),
            normalize_before=bool(conf.get("normalize_before", defaults.normalize_before)),
        )


def valid_frames(lengths: Tensor, max_len: int) -> Tensor:
    """Boolean (B, max_len) mask, True where the frame index is below the utterance length."""
    return torch.arange(max_len, device=lengths.device) < lengths[:, None]


def sinusoidal_positions(length: int, depth: int, device: torch.device) -> Tensor:
    """FunASR's fp32 position table (length, depth) for positions 1..length.

    Timescale i is exp(-i * ln(10000) / (depth/2 - 1)); the first half is sin, the second cos.
    The ops run in the same order and precision as funasr so the tables match bit for bit.
    """
    positions = torch.arange(1, length + 1, device=device, dtype=torch.float32)
    # filled where it is used: no host-to-device copy, so a CUDA graph can capture it
    log_increment = torch.full((), 10000.0, device=device).log() / (depth / 2 - 1)
    steps = torch.arange(depth // 2, device=device, dtype=torch.float32)
    scaled_time = positions[:, None] * torch.exp(steps * -log_increment)[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=-1)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """Softmax(q k^T / sqrt(D)) v with padded keys removed, heads merged back.

    ``q``, ``k`` and ``v`` are (B, H, T, D) and ``valid`` is (B, T); returns (B, T, H*D).
    scaled_dot_product_attention lets the GPU pick a fused kernel; every query keeps at least
    one valid key as long as each length is at least 1.
    """
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
    batch, heads, time, dim = context.shape
    return context.transpose(1, 2).reshape(batch, time, heads * dim)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, H*D) -> (B, H, T, D)."""
    batch, time, width = x.shape
    return x.view(batch, time, heads, width // heads).transpose(1, 2)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, as FunASR's SAN-M LayerNorm does."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the last dimension."""
        weight, bias = self.weight.float(), self.bias.float()
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class FeedForward(nn.Module):
    """Position-wise ``w_2(relu(w_1(x)))``."""

    def __init__(self, size: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the two projections."""
        return self.w_2(F.relu(self.w_1(x)))


class SanmAttention(nn.Module):
    """Multi-head self-attention plus the FSMN memory block over the values."""

    def __init__(self, in_size: int, size: int, config: SenseVoiceEncoderConfig) -> None:
        super().__init__()
        self.heads = config.attention_heads
        self.size = size
        self.linear_q_k_v = nn.Linear(in_size, 3 * size)
        self.fsmn_block = nn.Conv1d(size, size, config.kernel_size, groups=size, bias=False)
        self.linear_out = nn.Linear(size, size)
        left = (config.kernel_size - 1) // 2 + config.sanm_shift
        self.fsmn_padding = (left, config.kernel_size - 1 - left)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x (B, T, in_size), valid (B, T) -> (B, T, size)."""
        q, k, v = self.linear_q_k_v(x).split(self.size, dim=-1)
        qh, kh, vh = (split_heads(t, self.heads) for t in (q, k, v))
        context = masked_attention(qh, kh, vh, valid)
        return self.linear_out(context) + self._fsmn(v, valid)

    def _fsmn(self, v: Tensor, valid: Tensor) -> Tensor:
        """Depthwise convolution over time of the zero-padded values, plus the values."""
        keep = valid.unsqueeze(-1).to(v.dtype)
        v = v * keep
        memory = self.fsmn_block(F.pad(v.transpose(1, 2), self.fsmn_padding))
        return (memory.transpose(1, 2) + v) * keep


class SanmLayer(nn.Module):
    """Pre-norm SAN-M encoder layer; the attention residual exists only if in_size == size."""

    def __init__(self, in_size: int, config: SenseVoiceEncoderConfig) -> None:
        super().__init__()
        size = config.output_size
        self.self_attn = SanmAttention(in_size, size, config)
        self.feed_forward = FeedForward(size, config.linear_units)
        self.norm1 = Fp32LayerNorm(in_size)
        self.norm2 = Fp32LayerNorm(size)
        self.attention_residual = in_size == size

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x (B, T, in_size), valid (B, T) -> (B, T, output_size)."""
        attended = self.self_attn(self.norm1(x), valid)
        x = x + attended if self.attention_residual else attended
        return x + self.feed_forward(self.norm2(x))


class SenseVoiceEncoder(nn.Module):
    """FunASR ``SenseVoiceEncoderSmall`` (inference only; dropout omitted)."""

    def __init__(self, config: SenseVoiceEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders0 = nn.ModuleList([SanmLayer(config.input_size, config)])
        self.encoders = nn.ModuleList(
            [SanmLayer(config.output_size, config) for _ in range(config.num_blocks - 1)]
        )
        self.after_norm = Fp32LayerNorm(config.output_size)
        self.tp_encoders = nn.ModuleList(
            [SanmLayer(config.output_size, config) for _ in range(config.tp_blocks)]
        )
        self.tp_norm = Fp32LayerNorm(config.output_size)

    def forward(self, xs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Encode LFR features.

        Args:
            xs: (B, T, input_size) features, right-padded; not modified in place.
            lengths: (B,) valid frames per utterance, each in [1, T].

        Returns:
            (B, T, output_size) encodings (padded frames hold garbage) and ``lengths``.
        """
        time, depth = xs.shape[1], xs.shape[2]
        valid = valid_frames(lengths.to(xs.device), time)
        x = xs * self.config.output_size**0.5
        x = x + sinusoidal_positions(time, depth, xs.device).to(x.dtype)
        for layer in self.encoders0:
            x = layer(x, valid)
        for layer in self.encoders:
            x = layer(x, valid)
        x = self.after_norm(x)
        for layer in self.tp_encoders:
            x = layer(x, valid)
        return self.tp_norm(x), lengths
