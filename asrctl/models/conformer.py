"""FireRedASR's Conformer encoder and LLM adapter (FireRedASR-LLM / -AED), for inference.

Written from the architecture; ``tests/test_fireredasr_parity.py`` proves it equals the
``fireredasr`` package in fp32. Attribute names give the official state-dict keys
(``encoder.*`` and ``encoder_projector.*`` of ``model.pth.tar``), so checkpoints load strictly.

Encoder, on (B, T, idim) log-mel features normalised with the model's CMVN:

* ``input_preprocessor``: the features are right-padded with 6 zero frames (the 7-frame
  receptive field of the subsampling, minus one), then two 3x3 stride-2 Conv2d + ReLU
  (32 channels) give T' = ((T + 6 - 3) // 2 + 1 - 3) // 2 + 1 frames, flattened
  (channels, then frequency) and projected to ``d_model`` by ``out``.
* ``positional_encoding.pe``: a sinusoidal table of relative positions L-1 down to -(L-1)
  (L = 5000 in every release, so 9999 rows), stored in the checkpoint.
* ``layer_stack``: Conformer blocks, each ``x + ffn1/2``, relative-position self-attention,
  convolution module, ``x + ffn2/2``, then a final LayerNorm.
  - Feed-forward: LayerNorm, Linear d -> 4d, Swish, Linear 4d -> d (keys ``net.0/1/4``).
  - Attention (Transformer-XL style): q, k and v each get their own pre-LayerNorm and a
    bias-free projection; the score of query i and key j is
    ``((q_i + u) . k_j + (q_i + v) . p_(i-j)) / sqrt(d_head)`` where ``p = linear_pos(pe)``
    and u, v are the per-head ``pos_bias_u/v``; ``fc`` projects the heads back and the
    block input is added.
  - Convolution: LayerNorm, pointwise conv d -> 4d, GLU, depthwise conv (2d channels,
    kernel 33, zero padding), LayerNorm (named ``batch_norm`` in the checkpoint), Swish,
    pointwise conv 2d -> d, residual.

Adapter (``encoder_projector``): an odd last frame is dropped, each pair of frames is
concatenated (2 d_model), then Linear -> ReLU -> Linear to the LLM width.

Batching: each utterance's padded frames are zeroed before the subsampling and before and
after the convolution module, and are never attention keys, so the valid frames of a padded
batch equal the utterance encoded alone. Outputs at padded frames are unspecified.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrctl.models.encoder import AudioEncoder
from asrctl.models.features import Cmvn, FbankOptions, fbank, num_frames
from asrctl.models.padding import pad_short, padded_batch, shortest_input

__all__ = [
    "ConformerConfig",
    "ConformerEncoder",
    "FireRedAdapter",
    "FireRedAudio",
    "audio_positions",
    "relative_positions",
    "subsampled_length",
]

SUBSAMPLING_CHANNELS = 32
RIGHT_CONTEXT = 6  # zero frames appended before the subsampling (context 7 minus one)
PE_MAX_LEN = 5000  # the release's relative-position table covers -(L-1)..(L-1)

# FireRed's front end: 80-bin Kaldi fbank on int16-scaled samples, povey window, no dither.
FBANK_OPTIONS = FbankOptions(num_mel_bins=80, window="povey", dither=0.0, scale_to_int16=True)


@dataclass(frozen=True)
class ConformerConfig:
    """Shape of the encoder; defaults are those of FireRedASR-LLM-L / AED-L.

    Attributes:
        idim: Feature size per frame (80 mel bins).
        d_model: Model width.
        n_head: Attention heads (d_model must be divisible by it).
        n_layers: Conformer blocks.
        kernel_size: Depthwise convolution width (odd).
        pe_max_len: L of the relative-position table (2 L - 1 rows).
    """

    idim: int = 80
    d_model: int = 1280
    n_head: int = 20
    n_layers: int = 16
    kernel_size: int = 33
    pe_max_len: int = PE_MAX_LEN

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.idim < 7:
            raise ValueError(f"idim must be at least 7 for the subsampling, got {self.idim}")

    @classmethod
    def from_args(cls, args: argparse.Namespace | Mapping) -> ConformerConfig:
        """Read the AED ``args`` pickled in ``asr_encoder.pth.tar`` (other fields ignored).

        The release ignores ``pe_maxlen`` for the encoder's table (it sizes the AED
        decoder's), so ``pe_max_len`` keeps its default; pass the checkpoint's to override.
        """
        get = args.get if isinstance(args, Mapping) else lambda k, d=None: getattr(args, k, d)
        defaults = cls()
        return cls(
            idim=int(get("idim", defaults.idim)),
            d_model=int(get("d_model", defaults.d_model)),
            n_head=int(get("n_head", defaults.n_head)),
            n_layers=int(get("n_layers_enc", defaults.n_layers)),
            kernel_size=int(get("kernel_size", defaults.kernel_size)),
        )


@overload
def subsampled_length(frames: int) -> int: ...
@overload
def subsampled_length(frames: Tensor) -> Tensor: ...
def subsampled_length(frames: int | Tensor) -> int | Tensor:
    """Encoder frames for ``frames`` feature frames: ((T + 6 - 3) // 2 + 1 - 3) // 2 + 1."""
    after_first = (frames + RIGHT_CONTEXT - 3) // 2 + 1
    return (after_first - 3) // 2 + 1


def audio_positions(
    num_samples: int, downsample_rate: int, fbank_options: FbankOptions = FBANK_OPTIONS
) -> int:
    """Audio embeddings :class:`FireRedAudio` gives for ``num_samples`` samples (80 ms
    each at rate 2): fbank frames, subsampled by 4, stacked by the adapter's rate; a clip
    shorter than one embedding's worth counts as padded to it."""
    shortest = min_samples(downsample_rate, fbank_options)
    return _unpadded_positions(max(num_samples, shortest), downsample_rate, fbank_options)


def _unpadded_positions(num_samples: int, downsample_rate: int, fbank_options: FbankOptions) -> int:
    frames = int(num_frames(num_samples, fbank_options))
    return max(0, int(subsampled_length(frames)) // downsample_rate)


@functools.lru_cache(maxsize=16)
def min_samples(downsample_rate: int, fbank_options: FbankOptions = FBANK_OPTIONS) -> int:
    """Shorter clips are zero-padded to this (see :mod:`asrctl.models.padding`)."""
    return shortest_input(lambda n: _unpadded_positions(n, downsample_rate, fbank_options))


def relative_positions(max_len: int, d_model: int) -> Tensor:
    """The (1, 2 max_len - 1, d_model) sinusoidal table; row m is relative position L-1-m.

    Even columns hold sin(r w_k), odd columns cos(r w_k), w_k = 10000^(-2k / d_model).
    """
    rel = torch.arange(max_len - 1, -max_len, -1, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * -(math.log(1e4) / d_model))
    table = torch.zeros(2 * max_len - 1, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(rel * freq)
    table[:, 1::2] = torch.cos(rel * freq)
    return table.float()[None]


def _skew(scores: Tensor) -> Tensor:
    """(..., T, 2T - 1) scores against relative positions T-1..-(T-1) -> (..., T, T) by key.

    Entry (i, j) of the result is entry (i, T - 1 - i + j) of the input, i.e. the score for
    relative position i - j. For a contiguous input that is a strided view: row i starts
    T - 1 elements in and advances 2T - 2 elements per row (one fewer than the row length).
    """
    scores = scores.contiguous()
    *lead, t, width = scores.shape
    assert width == 2 * t - 1, scores.shape
    stride = list(scores.stride())
    return scores.as_strided(
        (*lead, t, t), (*stride[:-2], width - 1, 1), scores.storage_offset() + t - 1
    )


class Conv2dSubsampling(nn.Module):
    """Two 3x3 stride-2 convolutions with ReLU, flattened and projected to d_model."""

    def __init__(self, idim: int, d_model: int, channels: int = SUBSAMPLING_CHANNELS) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, 2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 2),
            nn.ReLU(),
        )
        freq = ((idim - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq, d_model)

    def forward(self, feats: Tensor) -> Tensor:
        """(B, T, idim), already right-padded -> (B, T', d_model)."""
        x = self.conv(feats[:, None])  # (B, C, T', F')
        batch, channels, time, freq = x.shape
        return self.out(x.permute(0, 2, 1, 3).reshape(batch, time, channels * freq))


class RelativePositionalEncoding(nn.Module):
    """Holds the checkpoint's ``pe`` table and slices it for a sequence length."""

    pe: Tensor  # a buffer

    def __init__(self, d_model: int, max_len: int = PE_MAX_LEN) -> None:
        super().__init__()
        self.max_len = max_len
        self.register_buffer("pe", relative_positions(max_len, d_model), persistent=True)

    def forward(self, length: int) -> Tensor:
        """(1, 2 length - 1, d_model): relative positions length-1 down to -(length-1)."""
        if length > self.max_len:
            raise ValueError(f"{length} encoder frames exceed the position table ({self.max_len})")
        center = self.max_len - 1
        return self.pe[:, center - length + 1 : center + length]


class FeedForward(nn.Module):
    """LayerNorm, Linear(d, 4d), Swish, Linear(4d, d): keys ``net.0``, ``net.1``, ``net.4``."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, 4 * d_model),
            nn.SiLU(),
            nn.Identity(),  # dropout in training
            nn.Linear(4 * d_model, d_model),
        )

    def forward(self, x: Tensor) -> Tensor:
        """The branch only; the block adds it to its input with weight 1/2."""
        return self.net(x)


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions and pre-LN on q/k/v."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head, self.d_head = n_head, d_model // n_head
        self.layer_norm_q = nn.LayerNorm(d_model)
        self.layer_norm_k = nn.LayerNorm(d_model)
        self.layer_norm_v = nn.LayerNorm(d_model)
        self.w_qs = nn.Linear(d_model, d_model, bias=False)
        self.w_ks = nn.Linear(d_model, d_model, bias=False)
        self.w_vs = nn.Linear(d_model, d_model, bias=False)
        self.fc = nn.Linear(d_model, d_model, bias=False)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_head, self.d_head))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_head, self.d_head))

    def _heads(self, x: Tensor) -> Tensor:
        """(B, T, H*D) -> (B, T, H, D)."""
        return x.view(*x.shape[:2], self.n_head, self.d_head)

    def forward(self, x: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        """x (B, T, d), pos (1, 2T - 1, d), valid (B, T) -> x + attention(x)."""
        batch, time, width = x.shape
        q = self._heads(self.w_qs(self.layer_norm_q(x)))
        k = self._heads(self.w_ks(self.layer_norm_k(x))).transpose(1, 2)
        v = self._heads(self.w_vs(self.layer_norm_v(x))).transpose(1, 2)
        p = self._heads(self.linear_pos(pos)).permute(0, 2, 3, 1)  # (1, H, D, 2T - 1)
        position_scores = _skew(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p))
        # Position scores plus the key mask form an additive bias on the content scores.
        bias = (position_scores / math.sqrt(self.d_head)).masked_fill(
            ~valid[:, None, None, :], float("-inf")
        )
        context = F.scaled_dot_product_attention(
            (q + self.pos_bias_u).transpose(1, 2), k, v, attn_mask=bias.to(q.dtype)
        )
        return x + self.fc(context.transpose(1, 2).reshape(batch, time, width))


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm (``batch_norm``), Swish, pointwise conv."""

    def __init__(self, d_model: int, kernel_size: int) -> None:
        super().__init__()
        inner = 2 * d_model
        self.pre_layer_norm = nn.LayerNorm(d_model)
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * inner, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(
            inner, inner, kernel_size, padding=(kernel_size - 1) // 2, groups=inner, bias=False
        )
        self.batch_norm = nn.LayerNorm(inner)  # a LayerNorm despite the checkpoint's name
        self.pointwise_conv2 = nn.Conv1d(inner, d_model, 1, bias=False)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x (B, T, d), valid (B, T) -> x + conv(x); padded frames enter as zeros."""
        keep = valid[..., None].to(x.dtype)
        y = (self.pre_layer_norm(x) * keep).transpose(1, 2)
        y = self.depthwise_conv(F.glu(self.pointwise_conv1(y), dim=1))
        y = F.silu(self.batch_norm(y.transpose(1, 2))).transpose(1, 2)
        return x + self.pointwise_conv2(y).transpose(1, 2) * keep


class ConformerBlock(nn.Module):
    """Macaron FFN/2, relative-position MHSA, convolution, FFN/2, LayerNorm."""

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        self.ffn1 = FeedForward(config.d_model)
        self.mhsa = RelPositionAttention(config.d_model, config.n_head)
        self.conv = ConvolutionModule(config.d_model, config.kernel_size)
        self.ffn2 = FeedForward(config.d_model)
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        """x (B, T, d) -> (B, T, d)."""
        x = x + 0.5 * self.ffn1(x)
        x = self.mhsa(x, pos, valid)
        x = self.conv(x, valid)
        x = x + 0.5 * self.ffn2(x)
        return self.layer_norm(x)


class ConformerEncoder(nn.Module):
    """FireRed's Conformer encoder (inference only; dropout omitted)."""

    def __init__(self, config: ConformerConfig) -> None:
        super().__init__()
        self.config = config
        self.input_preprocessor = Conv2dSubsampling(config.idim, config.d_model)
        self.positional_encoding = RelativePositionalEncoding(config.d_model, config.pe_max_len)
        self.layer_stack = nn.ModuleList(ConformerBlock(config) for _ in range(config.n_layers))

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a padded batch.

        Args:
            feats: (B, T, idim) normalised features; values past each length are ignored.
            lengths: (B,) valid frames per utterance.

        Returns:
            (B, T', d_model) encodings (garbage past each length) and (B,) lengths
            ``subsampled_length(lengths)``.
        """
        lengths = lengths.to(feats.device)
        valid_in = torch.arange(feats.shape[1], device=feats.device) < lengths[:, None]
        x = F.pad(feats * valid_in[..., None].to(feats.dtype), (0, 0, 0, RIGHT_CONTEXT))
        x = self.input_preprocessor(x)
        out_lengths = subsampled_length(lengths)
        valid = torch.arange(x.shape[1], device=x.device) < out_lengths[:, None]
        pos = self.positional_encoding(x.shape[1]).to(x.dtype)
        for layer in self.layer_stack:
            x = layer(x, pos, valid)
        return x, out_lengths


class FireRedAdapter(nn.Module):
    """Stacks ``downsample_rate`` frames, then Linear -> ReLU -> Linear to the LLM width."""

    def __init__(self, encoder_dim: int, llm_dim: int, downsample_rate: int = 2) -> None:
        super().__init__()
        self.downsample_rate = downsample_rate
        self.linear1 = nn.Linear(encoder_dim * downsample_rate, llm_dim)
        self.linear2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, d), (B,) -> (B, T // k, llm_dim), lengths // k (leftover frames dropped)."""
        k = self.downsample_rate
        batch, time, dim = x.shape
        stacked = x[:, : time // k * k].reshape(batch, time // k, dim * k)
        return self.linear2(F.relu(self.linear1(stacked))), lengths // k


class FireRedAudio(nn.Module, AudioEncoder):
    """Waveforms (16 kHz float) -> fbank + CMVN -> Conformer -> adapter -> audio embeddings."""

    cmvn_mean: Tensor  # buffers
    cmvn_istd: Tensor

    def __init__(
        self,
        config: ConformerConfig,
        cmvn: Cmvn,
        llm_dim: int,
        downsample_rate: int = 2,
        fbank_options: FbankOptions = FBANK_OPTIONS,
    ) -> None:
        super().__init__()
        if fbank_options.num_mel_bins != config.idim:
            raise ValueError(f"{fbank_options.num_mel_bins} mel bins != encoder idim {config.idim}")
        if cmvn.mean.numel() != config.idim:
            raise ValueError(f"CMVN has {cmvn.mean.numel()} dims, the encoder {config.idim}")
        self.fbank_options = fbank_options
        self.register_buffer("cmvn_mean", cmvn.mean.float(), persistent=False)
        self.register_buffer("cmvn_istd", cmvn.istd.float(), persistent=False)
        self.encoder = ConformerEncoder(config)
        self.encoder_projector = FireRedAdapter(config.d_model, llm_dim, downsample_rate)

    @classmethod
    def from_checkpoint(
        cls,
        config: ConformerConfig,
        state: Mapping[str, Tensor],
        cmvn: Cmvn,
        *,
        downsample_rate: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> FireRedAudio:
        """Build from ``encoder.*`` + ``encoder_projector.*`` tensors (strict key match)."""
        pe = state.get("encoder.positional_encoding.pe")
        if pe is not None:  # the table's size is the checkpoint's, whatever the args say
            config = ConformerConfig(**{**config.__dict__, "pe_max_len": (pe.shape[1] + 1) // 2})
        llm_dim = state["encoder_projector.linear2.weight"].shape[0]
        with torch.device("meta"):  # no random init: every parameter comes from ``state``
            model = cls(config, cmvn, llm_dim, downsample_rate)
        prefixes = ("encoder.", "encoder_projector.")
        wanted = {k: v.float() for k, v in state.items() if k.startswith(prefixes)}
        model.load_state_dict(wanted, strict=True, assign=True)
        return model.to(device=device, dtype=dtype).eval()

    @property
    def device(self) -> torch.device:
        return self.cmvn_mean.device

    def features(self, waves: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Normalised log-mel features (B, T, 80), zero past each length, and the lengths
        (clips shorter than one embedding's worth zero-padded: :mod:`asrctl.models.padding`)."""
        rate = self.encoder_projector.downsample_rate
        waves = pad_short(waves, min_samples(rate, self.fbank_options))
        lengths = torch.tensor([len(w) for w in waves], device=self.device)
        batch = padded_batch(waves, self.device)
        feats, frames = fbank(batch, lengths, self.fbank_options)
        feats = (feats - self.cmvn_mean) * self.cmvn_istd
        valid = torch.arange(feats.shape[1], device=feats.device) < frames[:, None]
        return feats * valid[..., None], frames

    def embed_features(self, feats: Tensor, lengths: Tensor) -> list[Tensor]:
        """Encoder + adapter on a padded feature batch: one (n_i, llm_dim) tensor each."""
        dtype = self.encoder_projector.linear1.weight.dtype
        enc, enc_lengths = self.encoder(feats.to(dtype), lengths)
        out, out_lengths = self.encoder_projector(enc, enc_lengths)
        return [out[i, :n] for i, n in enumerate(out_lengths.tolist())]

    def forward(self, waves: Sequence[Tensor]) -> list[Tensor]:
        feats, lengths = self.features(waves)
        return self.embed_features(feats, lengths)
