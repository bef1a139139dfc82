"""The contract of an audio encoder: waveforms in, LLM-space embeddings out.

Every family's frontend + encoder + projector (``asrctl.models.*``) implements it; the
request life cycle (:mod:`asrctl.pipeline`) calls only this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from asrctl.results import Word


class AudioEncoder(ABC):
    """Turns a batch of waveforms into LLM-space embeddings, one tensor per utterance."""

    @abstractmethod
    def __call__(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Encode float32 mono waveforms at the family's sample rate.

        Returns one ``(n_audio_tokens, llm_hidden)`` tensor per input, in input order.
        """

    @property
    def word_timing(self) -> bool:
        """True when this encoder can time words (e.g. Fun-ASR-Nano with its CTC head)."""
        return False

    def use_graphs(self, budget_samples: int | None) -> bool:
        """Replay passes of at most ``budget_samples`` padded samples (None: no limit) and
        :data:`asrctl.models.graphs.GRAPH_PASS_SECONDS` as CUDA graphs from now on (larger
        ones run eagerly); False where this encoder or its device cannot."""
        return False

    def encode(
        self, waves: Sequence[torch.Tensor], *, timing: bool = False
    ) -> tuple[list[torch.Tensor], list[object] | None]:
        """The embeddings, plus per-utterance alignment data (kept on the CPU until the text
        is known) when ``timing`` is asked and :attr:`word_timing` holds; else None."""
        return self(waves), None

    def word_times(self, texts: Sequence[str], timing: Sequence[object]) -> list[list[Word]]:
        """Word timestamps of each text, aligned to its utterance's ``timing`` data from
        :meth:`encode`: words in seconds from the utterance start,
        ``[]`` where the text cannot be aligned. Only called when :attr:`word_timing` holds."""
        raise NotImplementedError(f"{type(self).__name__} gives no word timestamps")
