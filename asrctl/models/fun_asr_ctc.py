"""Fun-ASR-Nano's CTC head and CTC forced alignment (token timestamps).

Written from the architecture, not copied; ``tests/test_fun_asr_ctc.py`` proves it equals
funasr 1.4.16 in fp32. Only the ModelScope ``model.pt`` carries the head (84 ``ctc_decoder.*``
tensors and ``ctc.ctc_lo.{weight,bias}``); the Hugging Face one has none, and then
:meth:`FunAsrCtcHead.from_checkpoint` returns None: no timestamps rather than fake ones.

Data flow, per utterance:

* the SenseVoice encoder output (before the audio adaptor) and its lengths go through
  ``ctc_decoder``, a :class:`FunAsrAdaptor` built from ``ctc_decoder_conf`` (funasr's
  ``Transformer`` class again, with ``encoder_dim`` set to the encoder's width), then
  ``ctc.ctc_lo`` (a Linear to ``ctc_vocab_size`` ids) and a log-softmax over the vocabulary;
* each output frame is 60 ms (LFR shift of 6 fbank frames x 10 ms, with downsample_rate 1);
* the LLM's text is tokenized with :class:`~asrctl.models.ctc_tokenizer.CtcTokenizer` and
  aligned to the frames by the best (Viterbi) CTC path; consecutive frames of one target
  token form a :class:`TokenSpan` (blank frames belong to no token).

Compact storage: a pipeline keeps :class:`CtcFrames` (the decoder output ``(T, D)`` and the
log-softmax normaliser ``(T,)``) until the text arrives, instead of ``T x 60515`` log-probs;
:meth:`FunAsrCtcHead.emissions` then computes the log-probs of only the blank and the targets:
``hidden @ W[ids].T + b[ids] - logsumexp``.

Use (``enc``/``enc_lens``: the audio encoder's output, which the audio adaptor also takes)::

    head = FunAsrCtcHead.from_checkpoint(config, state, encoder_dim=512, device=d, dtype=dt)
    tokenizer = CtcTokenizer.from_model_dir(model_dir, config)  # both None: no timestamps
    frames = [f.to("cpu") for f in head(enc, enc_lens)]  # park until the LLM text arrives
    targets = [tokenizer.encode(text) for text in texts]
    spans = head.align(frames, targets)  # [] for an utterance whose text cannot fit
    words = [word_times(t, tokenizer, s) for t, s in zip(texts, spans)]  # asrctl.models.ctc_words

funasr aligns the text it returns (``/sil`` replaced and whitespace runs collapsed to one space).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrctl.models.funasr_adaptor import FunAsrAdaptor, FunAsrAdaptorConfig

__all__ = [
    "DEFAULT_CTC_VOCAB_SIZE",
    "FRAME_SECONDS",
    "CtcFrames",
    "FunAsrCtcHead",
    "TokenSpan",
    "forced_align",
    "min_frames",
]

logger = logging.getLogger("asrctl")

DEFAULT_CTC_VOCAB_SIZE = 60515  # funasr's default for ``ctc_vocab_size``; blank = 60514
FRAME_SECONDS = 0.06  # one CTC frame: LFR shift 6 x 10 ms (funasr hard-codes * 6 * 10 / 1000)
CTC_PREFIXES = ("ctc_decoder.", "ctc.")  # the head's keys in model.pt, kept as they are
LOGIT_ROWS = 1024  # frames per full-vocabulary matmul when computing the normaliser


@dataclass(frozen=True)
class TokenSpan:
    """One target token's frames on the best CTC path (funasr's ``forced_align`` item).

    Attributes:
        token_id: The CTC tokenizer id.
        start_frame: First frame of the token.
        end_frame: One past its last frame (exclusive); seconds = frames x ``FRAME_SECONDS``.
        score: Highest probability (``exp`` of the frame log-prob) of the token over its frames;
            funasr rounds it to 3 decimals for display, this keeps the float.
    """

    token_id: int
    start_frame: int
    end_frame: int
    score: float


@dataclass(frozen=True)
class CtcFrames:
    """What one utterance's alignment needs, without the full ``(T, vocab)`` log-probs.

    Attributes:
        hidden: ``(T, D)`` ctc_decoder output of the valid frames (the decoder's dtype).
        log_norm: ``(T,)`` float32 logsumexp of ``ctc_lo(hidden)`` over the whole vocabulary.
    """

    hidden: Tensor
    log_norm: Tensor

    @property
    def num_frames(self) -> int:
        return int(self.hidden.shape[0])

    def to(self, device: torch.device | str) -> CtcFrames:
        """A copy on ``device`` (e.g. ``"cpu"`` to hold many utterances off the GPU)."""
        return CtcFrames(self.hidden.to(device), self.log_norm.to(device))


class CtcProjection(nn.Module):
    """funasr's ``CTC`` module at inference: ``ctc_lo``, a Linear to the CTC vocabulary."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.ctc_lo = nn.Linear(dim, vocab_size)


class FunAsrCtcHead(nn.Module):
    """``ctc_decoder`` + ``ctc.ctc_lo`` of Fun-ASR-Nano; ``state_dict()`` keys equal model.pt's.

    The decoder runs in the dtype the head was loaded with; ``ctc_lo``, the logits and the
    normaliser stay float32 (funasr runs the CTC path in fp32).
    """

    def __init__(self, decoder: FunAsrAdaptorConfig, vocab_size: int, blank_id: int) -> None:
        super().__init__()
        if not 0 <= blank_id < vocab_size:
            raise ValueError(f"blank id {blank_id} outside the CTC vocabulary of {vocab_size}")
        self.ctc_decoder = FunAsrAdaptor(decoder)
        self.ctc = CtcProjection(decoder.llm_dim, vocab_size)
        self.blank_id = blank_id

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, encoder_dim: int) -> FunAsrCtcHead:
        """An untrained head shaped by ``config.yaml`` (``ctc_decoder_conf``, ``ctc_vocab_size``,
        ``ctc_conf.blank_id``); ``encoder_dim`` replaces the yaml's, as funasr does."""
        decoder = FunAsrAdaptorConfig.from_conf(config.get("ctc_decoder_conf") or {})
        vocab_size = int(config.get("ctc_vocab_size", DEFAULT_CTC_VOCAB_SIZE))
        blank_id = int((config.get("ctc_conf") or {}).get("blank_id", vocab_size - 1))
        return cls(replace(decoder, encoder_dim=encoder_dim), vocab_size, blank_id)

    @classmethod
    def from_checkpoint(
        cls,
        config: Mapping[str, Any],
        state: Mapping[str, Tensor],
        *,
        encoder_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> FunAsrCtcHead | None:
        """The trained head of a Fun-ASR-Nano checkpoint, or None if it cannot give timestamps.

        Args:
            config: The parsed ``config.yaml``.
            state: model.pt's state dict; its ``ctc_decoder.*`` and ``ctc.*`` keys are loaded
                as they are (strict), other keys are ignored.
            encoder_dim: The audio encoder's output width.
            device: Where the head runs.
            dtype: The decoder's dtype (``ctc_lo`` stays float32).

        Returns:
            None when ``config.yaml`` names no ``ctc_decoder`` (or one other than funasr's
            ``Transformer``), when model.pt has no CTC tensors (the Hugging Face release), or
            when some are missing (funasr's ``disable_incomplete_ctc``: untrained weights give
            fake, evenly spaced timestamps).

        Raises:
            ValueError: The CTC tensors do not fit the config (unexpected keys or shapes).
        """
        if not _configured(config):
            return None
        tensors = {k: v for k, v in state.items() if k.startswith(CTC_PREFIXES)}
        if not tensors:
            logger.info("no CTC tensors in the checkpoint: timestamps are unavailable")
            return None
        with torch.device("meta"):
            head = cls.from_config(config, encoder_dim=encoder_dim)
        if not _check_tensors(head, tensors):
            return None
        head.load_state_dict(tensors, strict=True, assign=True)
        head.requires_grad_(False)
        head.to(device=device, dtype=dtype)
        head.ctc.to(torch.float32)
        return head.eval()

    @property
    def vocab_size(self) -> int:
        return self.ctc.ctc_lo.out_features

    def forward(self, enc: Tensor, enc_lens: Tensor) -> list[CtcFrames]:
        """Run the decoder on a padded batch of encoder output.

        Args:
            enc: ``(B, T, encoder_dim)`` SenseVoice encoder output (before the audio adaptor).
            enc_lens: ``(B,)`` valid frames per utterance.

        Returns:
            One :class:`CtcFrames` per utterance, holding only its valid frames (copied, so
            the padded batch can be freed).
        """
        dtype = self.ctc_decoder.linear1.weight.dtype
        hidden, lens = self.ctc_decoder(enc.to(dtype), enc_lens)
        counts = [int(n) for n in lens.tolist()]
        valid = torch.cat([hidden[i, :n] for i, n in enumerate(counts)])
        norms = torch.cat([self._log_norm(rows) for rows in valid.split(LOGIT_ROWS)])
        return [
            CtcFrames(rows.clone(), norm.clone())  # own storage: each can be kept or freed
            for rows, norm in zip(valid.split(counts), norms.split(counts), strict=True)
        ]

    def log_probs(self, frames: CtcFrames) -> Tensor:
        """``(T, vocab)`` float32 log-probs of every id (funasr's ``ctc.log_softmax``)."""
        logits = self._logits(frames.hidden)
        return logits - frames.log_norm.to(logits.device)[:, None]

    def emissions(self, frames: CtcFrames, ids: Sequence[int]) -> Tensor:
        """``(T, len(ids))`` float32 log-probs of the given ids only (columns in ``ids`` order).

        Equal to ``log_probs(frames)[:, ids]`` without the full-vocabulary matmul.
        """
        lo = self.ctc.ctc_lo
        index = torch.as_tensor(list(ids), dtype=torch.long, device=lo.weight.device)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        hidden = frames.hidden.to(lo.weight.device, torch.float32)
        logits = torch.addmm(lo.bias[index], hidden, lo.weight[index].T)
        return logits - frames.log_norm.to(lo.weight.device)[:, None]

    def align(
        self, frames: Sequence[CtcFrames], targets: Sequence[Sequence[int]]
    ) -> list[list[TokenSpan]]:
        """Force-align each utterance's target ids (CTC tokenization of its text) to its frames.

        Returns one list of :class:`TokenSpan` per utterance, one span per target in order, or
        an empty list where the targets are empty or need more frames than the utterance has.
        """
        if len(frames) != len(targets):
            raise ValueError(f"{len(frames)} utterances but {len(targets)} target lists")
        if any(self.blank_id in ids for ids in targets):
            raise ValueError(f"targets must not contain the blank id {self.blank_id}")
        emissions = [
            self.emissions(f, [self.blank_id, *ids]) for f, ids in zip(frames, targets, strict=True)
        ]
        return forced_align(emissions, targets)

    def _logits(self, hidden: Tensor) -> Tensor:
        lo = self.ctc.ctc_lo
        return F.linear(hidden.to(lo.weight.device, torch.float32), lo.weight, lo.bias)

    def _log_norm(self, hidden: Tensor) -> Tensor:
        return torch.logsumexp(self._logits(hidden), dim=-1)


def _configured(config: Mapping[str, Any]) -> bool:
    """Whether config.yaml asks for funasr's CTC head (funasr builds none otherwise)."""
    name = config.get("ctc_decoder")
    if name is None:
        return False
    if name != "Transformer":
        logger.warning("unsupported ctc_decoder %r: timestamps are unavailable", name)
        return False
    return True


def _check_tensors(head: FunAsrCtcHead, tensors: Mapping[str, Tensor]) -> bool:
    """False (with a warning) if tensors are missing; raise on unexpected keys or shapes."""
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"unexpected CTC tensors in the checkpoint: {', '.join(unexpected[:3])}")
    wrong = [k for k, v in tensors.items() if tuple(v.shape) != expected[k]]
    if wrong:
        k = wrong[0]
        raise ValueError(f"{k} has shape {tuple(tensors[k].shape)}, config gives {expected[k]}")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        logger.warning(
            "CTC timestamps disabled: the checkpoint lacks %d of %d CTC tensors (%s)",
            len(missing),
            len(expected),
            ", ".join(missing[:3]),
        )
        return False
    return True


def min_frames(targets: Sequence[int]) -> int:
    """Fewest frames a CTC path for ``targets`` needs: one per token, plus a blank between
    equal neighbours."""
    repeats = sum(a == b for a, b in pairwise(targets))
    return len(targets) + repeats


def forced_align(
    emissions: Sequence[Tensor], targets: Sequence[Sequence[int]]
) -> list[list[TokenSpan]]:
    """Best CTC path of each utterance (batched Viterbi), grouped into token spans.

    Args:
        emissions: Per utterance a ``(T, 1 + L)`` tensor of log-probs: column 0 the blank,
            column k the k-th target (as :meth:`FunAsrCtcHead.emissions` gives for
            ``[blank, *targets]``). All on one device; the Viterbi runs there.
        targets: Per utterance its L target ids (used for ``token_id`` and the rule that
            equal consecutive targets need a blank between them).

    Returns:
        Per utterance, one :class:`TokenSpan` per target in order; an empty list where there
        are no targets or fewer frames than :func:`min_frames`. On ties the path prefers
        staying in a state, then advancing by one, and it ends on the last token rather than
        a trailing blank, like torchaudio's ``forced_align``.
    """
    if len(emissions) != len(targets):
        raise ValueError(f"{len(emissions)} emission matrices but {len(targets)} target lists")
    for e, ids in zip(emissions, targets, strict=True):
        if e.ndim != 2 or e.shape[1] != 1 + len(ids):
            raise ValueError(f"emissions of shape {tuple(e.shape)} for {len(ids)} targets")
    targets = [[int(i) for i in ids] for ids in targets]
    results: list[list[TokenSpan]] = [[] for _ in targets]
    todo = [i for i, ids in enumerate(targets) if ids and len(emissions[i]) >= min_frames(ids)]
    if todo:
        paths = _viterbi([emissions[i] for i in todo], [targets[i] for i in todo])
        for i, (path, scores) in zip(todo, paths, strict=True):
            results[i] = _spans(path, scores, targets[i])
    return results


@dataclass(frozen=True)
class _Lattice:
    """A padded batch of CTC state graphs: states blank, y1, blank, y2, ..., yL, blank."""

    emissions: Tensor  # (B, T, S) log-prob of each state's label per frame, -inf padded
    skip: Tensor  # (B, S) True where a state may be entered from two states back
    frames: Tensor  # (B,) valid frames
    states: Tensor  # (B,) valid states, 2L + 1


def _lattice(emissions: Sequence[Tensor], targets: Sequence[Sequence[int]]) -> _Lattice:
    device = emissions[0].device
    dtype = torch.float64 if emissions[0].dtype == torch.float64 else torch.float32
    frames = [len(e) for e in emissions]
    states = [2 * len(ids) + 1 for ids in targets]
    batch, time, width = len(emissions), max(frames), max(states)
    out = torch.full((batch, time, width), -math.inf, dtype=dtype, device=device)
    skip = torch.zeros((batch, width), dtype=torch.bool)
    for b, (e, ids) in enumerate(zip(emissions, targets, strict=True)):
        s = torch.arange(states[b], device=device)
        column = torch.where(s % 2 == 1, (s + 1) // 2, 0)  # state 2k+1 holds target k
        out[b, : frames[b], : states[b]] = e.to(device, dtype)[:, column]
        differs = [x != y for x, y in pairwise(ids)]  # target k+1 differs from target k
        skip[b, 3 : states[b] : 2] = torch.tensor(differs, dtype=torch.bool)
    return _Lattice(out, skip.to(device), torch.tensor(frames, device=device), torch.tensor(states))


def _viterbi(
    emissions: Sequence[Tensor], targets: Sequence[Sequence[int]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per utterance (all feasible) the best state path and its per-frame log-probs."""
    lat = _lattice(emissions, targets)
    batch, time, width = lat.emissions.shape
    neg = torch.tensor(-math.inf, dtype=lat.emissions.dtype, device=lat.emissions.device)
    alpha = torch.full((batch, width), -math.inf, dtype=neg.dtype, device=neg.device)
    alpha[:, :2] = lat.emissions[:, 0, :2]  # start in the leading blank or the first token
    back = torch.zeros((time, batch, width), dtype=torch.int8, device=neg.device)
    for t in range(1, time):
        advance = F.pad(alpha[:, :-1], (1, 0), value=-math.inf)
        skip = F.pad(alpha[:, :-2], (2, 0), value=-math.inf).where(lat.skip, neg)
        best, choice = torch.stack((alpha, advance, skip)).max(dim=0)  # ties: the first
        live = (t < lat.frames)[:, None]  # finished utterances keep their scores
        alpha = torch.where(live, best + lat.emissions[:, t], alpha)
        back[t] = torch.where(live, choice.to(torch.int8), 0)
    rows = torch.arange(batch)
    last = alpha.cpu()[rows, lat.states - 1]
    before = alpha.cpu()[rows, lat.states - 2]
    end = torch.where(last > before, lat.states - 1, lat.states - 2)  # ties: the last token
    path = _backtrack(back.cpu().numpy(), end.numpy())
    index = torch.from_numpy(path.T).to(lat.emissions.device).unsqueeze(-1)
    scores = lat.emissions.gather(2, index).squeeze(-1).cpu().numpy()
    counts = lat.frames.tolist()
    return [(path[:n, b], scores[b, :n]) for b, n in enumerate(counts)]


def _backtrack(back: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(T, B) best states from the (T, B, S) back-pointers (steps back) and the end states."""
    time, batch, _ = back.shape
    path = np.empty((time, batch), dtype=np.int64)
    state, rows = end.astype(np.int64), np.arange(batch)
    path[-1] = state
    for t in range(time - 1, 0, -1):
        state = state - back[t, rows, state]
        path[t - 1] = state
    return path


def _spans(path: np.ndarray, scores: np.ndarray, targets: Sequence[int]) -> list[TokenSpan]:
    """Group runs of one token state into spans; blank states (even) are skipped."""
    starts = np.flatnonzero(np.r_[True, path[1:] != path[:-1]])
    ends = np.r_[starts[1:], len(path)]
    return [
        TokenSpan(
            token_id=int(targets[path[a] // 2]),
            start_frame=int(a),
            end_frame=int(z),
            score=math.exp(float(scores[a:z].max())),
        )
        for a, z in zip(starts, ends, strict=True)
        if path[a] % 2 == 1
    ]
