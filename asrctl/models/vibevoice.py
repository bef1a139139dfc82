"""VibeVoice-ASR's audio path: two σ-VAE tokenizer encoders and two connectors, summed.

Each encoder is a causal 1-D conv stack (a stem conv and five-to-six strided downsampling
convs, each followed by ConvNeXt-style blocks: RMSNorm → depthwise causal conv → layer
scale, RMSNorm → GELU FFN → layer scale) ending in a causal conv head to ``vae_dim``.
With ratios 2·2·4·5·5·8 one latent covers 3200 samples (7.5 per second at 24 kHz).

Module names follow the original ``microsoft/VibeVoice-ASR`` checkpoint
(``downsample_layers.i.0.conv.conv``, ``stages.i.j.mixer.conv.conv.conv``, ``head.conv.conv``);
:func:`hf_to_original` renames the transformers ``-HF`` layout onto them.

Deterministic by design: the acoustic latent is the VAE mean (the original samples
``mean + fix_std·N(0,1)`` unless told otherwise; transformers adds ``vae_std`` noise).
Long audio is encoded in pieces (60 s by default) whose causal convolutions carry the
last ``left_pad`` input samples of every layer from one piece to the next, so the result
does not depend on the piece size (up to float rounding).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from asrctl.models.encoder import AudioEncoder

SAMPLE_RATE = 24000
TARGET_DBFS = -25.0
NORM_EPS = 1e-6
DEFAULT_CHUNK_SECONDS = 60.0

Cache = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EncoderDims:
    """One σ-VAE encoder. ``ratios`` in input order (the original config lists them reversed)."""

    vae_dim: int
    n_filters: int = 32
    ratios: tuple[int, ...] = (2, 2, 4, 5, 5, 8)
    depths: tuple[int, ...] = (3, 3, 3, 3, 3, 3, 8)
    kernel: int = 7
    eps: float = 1e-5
    ffn_expansion: int = 4
    channels: int = 1

    @property
    def hop(self) -> int:
        return math.prod(self.ratios)

    @classmethod
    def from_original(cls, cfg: Mapping) -> EncoderDims:
        """From ``acoustic_tokenizer_config`` / ``semantic_tokenizer_config`` of config.json."""
        depths = cfg.get("encoder_depths", "3-3-3-3-3-3-8")
        if isinstance(depths, str):
            depths = [int(d) for d in depths.split("-")]
        return cls(
            vae_dim=int(cfg["vae_dim"]),
            n_filters=int(cfg.get("encoder_n_filters", 32)),
            ratios=tuple(reversed([int(r) for r in cfg.get("encoder_ratios", [8, 5, 5, 4, 2, 2])])),
            depths=tuple(depths),
            eps=float(cfg.get("layernorm_eps", 1e-5)),
            channels=int(cfg.get("channels", 1)),
        )

    @classmethod
    def from_hf(cls, cfg: Mapping) -> EncoderDims:
        """From ``{acoustic,semantic}_tokenizer_encoder_config`` of a -HF config.json."""
        return cls(
            vae_dim=int(cfg.get("hidden_size", 64)),
            n_filters=int(cfg.get("num_filters", 32)),
            ratios=tuple(cfg.get("downsampling_ratios", (2, 2, 4, 5, 5, 8))),
            depths=tuple(cfg.get("depths", (3, 3, 3, 3, 3, 3, 8))),
            kernel=int(cfg.get("kernel_size", 7)),
            eps=float(cfg.get("rms_norm_eps", 1e-5)),
            ffn_expansion=int(cfg.get("ffn_expansion", 4)),
            channels=int(cfg.get("channels", 1)),
        )


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class _Conv(nn.Module):
    """``.conv`` = nn.Conv1d (the original's NormConv1d wrapper, norm 'none')."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv1d(*args, **kwargs)


class CausalConv1d(nn.Module):
    """Left-padded conv; with a cache, the padding is the previous piece's tail."""

    def __init__(
        self, key: str, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = _Conv(c_in, c_out, kernel, stride, groups=groups)
        self.key = key
        self.left_pad = kernel - stride

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        if cache is None:
            padded = F.pad(x, (self.left_pad, 0))
        else:
            prev = cache.get(self.key)
            if prev is None:
                prev = x.new_zeros(x.shape[0], x.shape[1], self.left_pad)
            padded = torch.cat([prev, x], dim=-1)
            cache[self.key] = padded[..., padded.shape[-1] - self.left_pad :].clone()
        return self.conv.conv(padded)


class _DepthwiseMixer(nn.Module):
    def __init__(self, key: str, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv = CausalConv1d(key, dim, dim, kernel, groups=dim)


class _FFN(nn.Module):
    def __init__(self, dim: int, expansion: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, expansion * dim)
        self.linear2 = nn.Linear(expansion * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class Block1d(nn.Module):
    def __init__(self, key: str, dim: int, d: EncoderDims) -> None:
        super().__init__()
        self.norm = _RMSNorm(dim, d.eps)
        self.mixer = _DepthwiseMixer(key, dim, d.kernel)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.ffn_norm = _RMSNorm(dim, d.eps)
        self.ffn = _FFN(dim, d.ffn_expansion)
        self.ffn_gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:  # (B, C, T)
        h = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = x + self.mixer.conv(h, cache) * self.gamma[:, None]
        h = self.ffn(self.ffn_norm(x.transpose(1, 2)))
        return x + (h * self.ffn_gamma).transpose(1, 2)


class _Down(nn.Module):
    """``downsample_layers.i`` is a one-element Sequential in the original: ``.0`` is the conv."""

    def __init__(self, conv: CausalConv1d) -> None:
        super().__init__()
        self.add_module("0", conv)

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        return getattr(self, "0")(x, cache)


class SigmaVaeEncoder(nn.Module):
    """Waveform (B, T) with T a multiple of ``hop`` → latents (B, T/hop, vae_dim)."""

    def __init__(self, d: EncoderDims) -> None:
        super().__init__()
        self.dims = d
        n = d.n_filters
        down = [_Down(CausalConv1d("stem", d.channels, n, d.kernel))]
        for i, r in enumerate(d.ratios):
            down.append(_Down(CausalConv1d(f"down{i}", n * 2**i, n * 2 ** (i + 1), 2 * r, r)))
        self.downsample_layers = nn.ModuleList(down)
        self.stages = nn.ModuleList(
            nn.ModuleList(Block1d(f"s{s}b{b}", n * 2**s, d) for b in range(depth))
            for s, depth in enumerate(d.depths)
        )
        self.head = CausalConv1d("head", n * 2 ** len(d.ratios), d.vae_dim, d.kernel)

    def forward(self, wave: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = wave[:, None, :]
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = down(x, cache)
            for block in cast(nn.ModuleList, stage):  # stages holds ModuleLists
                x = block(x, cache)
        return self.head(x, cache).transpose(1, 2)


class Connector(nn.Module):
    """``fc1`` → RMSNorm(1e-6) → ``fc2``: latents to the LLM's hidden size."""

    def __init__(self, vae_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vae_dim, hidden)
        self.norm = _RMSNorm(hidden, 1e-6)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x)))


def normalize_loudness(wave: torch.Tensor, target_dbfs: float = TARGET_DBFS) -> torch.Tensor:
    """Scale to ``target_dbfs`` RMS; if that clips, scale the peak back to just under 1."""
    wave = wave.float()
    rms = wave.pow(2).mean().sqrt()
    wave = wave * (10 ** (target_dbfs / 20) / (rms + NORM_EPS))
    peak = wave.abs().max()
    return wave / (peak + NORM_EPS) if peak > 1.0 else wave


def n_audio_tokens(n_samples: int, hop: int = 3200) -> int:
    return -(-n_samples // hop)


class VibeVoiceAudio(nn.Module, AudioEncoder):
    """The audio path of VibeVoice-ASR."""

    def __init__(
        self,
        acoustic: EncoderDims,
        semantic: EncoderDims,
        hidden: int,
        *,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> None:
        super().__init__()
        if acoustic.hop != semantic.hop:
            raise ValueError(f"acoustic hop {acoustic.hop} != semantic hop {semantic.hop}")
        self.acoustic_tokenizer = SigmaVaeEncoder(acoustic)
        self.semantic_tokenizer = SigmaVaeEncoder(semantic)
        self.acoustic_connector = Connector(acoustic.vae_dim, hidden)
        self.semantic_connector = Connector(semantic.vae_dim, hidden)
        self.hop = acoustic.hop
        self.chunk = max(1, round(chunk_seconds * SAMPLE_RATE / self.hop)) * self.hop

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def prepare(self, waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """Loudness-normalised waves, zero-padded to a common multiple of the hop."""
        normed = [normalize_loudness(w.reshape(-1)) for w in waves]
        counts = [n_audio_tokens(len(w), self.hop) for w in normed]
        batch = torch.zeros(len(normed), max(counts) * self.hop)
        for i, w in enumerate(normed):
            batch[i, : len(w)] = w
        return batch, counts

    @torch.no_grad()
    def latents(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(acoustic mean, semantic mean) latents of a prepared batch, piece by piece."""
        batch = batch.to(self.device, self.dtype)
        if batch.shape[-1] <= self.chunk:
            return self.acoustic_tokenizer(batch), self.semantic_tokenizer(batch)
        ac_cache: Cache = {}
        se_cache: Cache = {}
        ac, se = [], []
        for piece in torch.split(batch, self.chunk, dim=-1):
            ac.append(self.acoustic_tokenizer(piece, ac_cache))
            se.append(self.semantic_tokenizer(piece, se_cache))
        return torch.cat(ac, 1), torch.cat(se, 1)

    @torch.no_grad()
    def __call__(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not waves:
            return []
        batch, counts = self.prepare(waves)
        acoustic, semantic = self.latents(batch)
        out = self.acoustic_connector(acoustic) + self.semantic_connector(semantic)
        return [out[i, :n] for i, n in enumerate(counts)]

    @classmethod
    def from_state(
        cls,
        acoustic: EncoderDims,
        semantic: EncoderDims,
        hidden: int,
        state: Mapping[str, torch.Tensor],
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    ) -> VibeVoiceAudio:
        """Build from original-layout keys (``acoustic_tokenizer.encoder.*`` etc., no
        ``model.`` prefix); decoder weights, if present, are ignored."""
        with torch.device("meta"):
            module = cls(acoustic, semantic, hidden, chunk_seconds=chunk_seconds)
        wanted = {}
        for name, t in state.items():
            for tok in ("acoustic_tokenizer", "semantic_tokenizer"):
                if name.startswith(f"{tok}.encoder."):
                    wanted[f"{tok}.{name[len(tok) + len('.encoder.') :]}"] = t
            if name.startswith(("acoustic_connector.", "semantic_connector.")):
                wanted[name] = t
        module.load_state_dict(wanted, strict=True, assign=True)
        return module.to(device=device, dtype=dtype).eval()


# --- the -HF layout -------------------------------------------------------------------------

_HF_PROJECTOR = {
    "acoustic_linear_1": "acoustic_connector.fc1",
    "acoustic_norm": "acoustic_connector.norm",
    "acoustic_linear_2": "acoustic_connector.fc2",
    "semantic_linear_1": "semantic_connector.fc1",
    "semantic_norm": "semantic_connector.norm",
    "semantic_linear_2": "semantic_connector.fc2",
}


def _block_name(rest: str) -> str:
    return (
        rest.replace("mixer.conv.", "mixer.conv.conv.conv.", 1)
        if rest.startswith("mixer.conv.")
        else rest
    )


def _hf_encoder_key(rest: str) -> str:
    if m := re.match(r"^stem\.conv\.conv\.(.*)$", rest):
        return f"downsample_layers.0.0.conv.conv.{m[1]}"
    if m := re.match(r"^stem\.stage\.(\d+)\.(.*)$", rest):
        return f"stages.0.{m[1]}.{_block_name(m[2])}"
    if m := re.match(r"^conv_layers\.(\d+)\.conv\.conv\.(.*)$", rest):
        return f"downsample_layers.{int(m[1]) + 1}.0.conv.conv.{m[2]}"
    if m := re.match(r"^conv_layers\.(\d+)\.stage\.(\d+)\.(.*)$", rest):
        return f"stages.{int(m[1]) + 1}.{m[2]}.{_block_name(m[3])}"
    if m := re.match(r"^head\.conv\.(.*)$", rest):
        return f"head.conv.conv.{m[1]}"
    raise KeyError(f"unexpected VibeVoice -HF tokenizer-encoder key {rest!r}")


def hf_to_original(name: str) -> str | None:
    """An -HF audio key (``model.`` stripped) under the original layout's name, or None."""
    for tok in ("acoustic", "semantic"):
        prefix = f"{tok}_tokenizer_encoder."
        if name.startswith(prefix):
            return f"{tok}_tokenizer.encoder.{_hf_encoder_key(name[len(prefix) :])}"
    if name.startswith("multi_modal_projector."):
        module, _, leaf = name[len("multi_modal_projector.") :].partition(".")
        return f"{_HF_PROJECTOR[module]}.{leaf}"
    return None
