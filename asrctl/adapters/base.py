"""The contract every model family implements.

An adapter knows one family's on-disk layout and everything that is specific to it:
which files it needs, how to export its LLM as a stock vLLM architecture, how to turn
waveforms into LLM-space audio embeddings, how the prompt around them looks, and how to
clean the decoded text. Everything else (audio loading, batching, the engine, results)
is shared and knows nothing about families.

Prompts are built as *prefix text*, audio embeddings, *suffix text*: the engine tokenizes
the two text parts with the model's own tokenizer, embeds them with rows of the exported
embedding table and splices the audio in between. An adapter never hard-codes token ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from asrctl.models.encoder import AudioEncoder

if TYPE_CHECKING:
    import torch

    from asrctl.results import Segment

__all__ = ["Adapter", "AudioEncoder", "Family", "LlmExport", "Prompt", "PromptOptions"]


@dataclass(frozen=True)
class RequiredFile:
    """A file or folder a family needs, relative to the model directory."""

    path: str
    what: str  # what it should hold, shown to users when it is missing
    is_dir: bool = False


@dataclass(frozen=True)
class PromptOptions:
    """Per-request prompt settings; each family decides what it can honour."""

    language: str | None = None  # a code such as "zh"; None or "auto" lets the model decide
    hotwords: tuple[str, ...] = ()  # words or phrases to bias recognition towards
    itn: bool = True  # inverse text normalisation (numbers as digits, punctuation)
    # the caller's own instruction (chat clients' text), for families whose prompt takes
    # one (Family.chat_text == "instruction"); None: the family's own
    instruction: str | None = None


@dataclass(frozen=True)
class Prompt:
    """Text before and after the audio embeddings."""

    prefix: str
    suffix: str


@dataclass(frozen=True)
class LlmExport:
    """What the exporter writes for vLLM: a stock causal-LM directory.

    Attributes:
        config: the LLM's config.json content (must name a ``...ForCausalLM`` architecture).
        tokenizer_dir: folder whose tokenizer/generation files are copied next to the weights.
        sources: files whose content determines the export (hashed into the manifest).
        config_source: where ``config`` comes from, as named in error messages.
    """

    config: dict
    tokenizer_dir: Path
    sources: tuple[Path, ...]
    config_source: str = "config.json"


@dataclass(frozen=True)
class Family:
    """Static facts about a family, used by the registry and error messages."""

    name: str  # CLI name, e.g. "fun-asr-nano"
    title: str  # human name, e.g. "Fun-ASR-Nano"
    sample_rate: int  # Hz the frontend expects
    max_audio_seconds: float | None  # longest input one pass accepts (None: no limit)
    languages: Mapping[str, str] = field(default_factory=dict)  # code -> name used in prompts
    repetition_penalty: float = 1.0  # default decoding penalty (1.0: none); see Engine.generate
    # how a chat client's text enters the prompt: "hotwords" (context words),
    # "instruction" (PromptOptions.instruction) or "none" (ignored: no text prompt)
    chat_text: str = "hotwords"
    writes_segments: bool = False  # the model writes structured segments (parse_output)
    # most padded audio (seconds) one audio-encoder pass may hold, where the encoder's
    # memory per second of audio needs a lower bound than every entry point's budget
    # (ENCODER_BATCH_SECONDS); None: the entry point's budget alone
    max_encoder_batch_seconds: float | None = None


class Adapter(ABC):
    """One model family. Subclasses set ``family`` and ``required`` and implement the rest."""

    family: ClassVar[Family]
    required: ClassVar[tuple[RequiredFile, ...]]

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir

    @classmethod
    @abstractmethod
    def matches(cls, model_dir: Path) -> bool:
        """True when the directory looks like this family (cheap: names and small files)."""

    def check(self) -> list[str]:
        """Every problem with the directory, each naming the file and what it should hold."""
        problems = []
        for req in self.required:
            path = self.model_dir / req.path
            if path.is_symlink() and not path.exists():
                problems.append(f"{req.path} is a broken symlink to {path.readlink()} ({req.what})")
            elif not path.exists():
                problems.append(
                    f"missing required {'folder' if req.is_dir else 'file'}: "
                    f"{req.path} — {req.what}"
                )
            elif req.is_dir != path.is_dir():
                problems.append(
                    f"{req.path} should be a {'folder' if req.is_dir else 'file'} ({req.what})"
                )
        return problems or self.check_contents()

    def check_contents(self) -> list[str]:
        """Deeper checks once every required file exists (parse configs, keys)."""
        return []

    @abstractmethod
    def llm_export(self) -> LlmExport:
        """Describe the stock LLM the engine runs."""

    @abstractmethod
    def llm_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The LLM's weights under the stock architecture's key names."""

    @abstractmethod
    def audio_encoder(self, device: str, dtype: torch.dtype) -> AudioEncoder:
        """Build the frontend + encoder + projector on ``device``."""

    @abstractmethod
    def audio_positions(self, num_samples: int) -> int:
        """Audio embeddings the encoder gives for ``num_samples`` samples at the family's
        rate, from the length formula alone (no encoder run, no weights loaded)."""

    @abstractmethod
    def prompt(self, options: PromptOptions) -> Prompt:
        """The text around the audio for these options (raises OptionsError if unsupported)."""

    def prompt_for_audio(self, options: PromptOptions, seconds: float | None) -> Prompt:
        """The prompt for one utterance of ``seconds`` (default: ``prompt(options)``).

        Families whose prompt states the audio duration (VibeVoice-ASR) override this.
        """
        return self.prompt(options)

    def postprocess(self, text: str) -> str:
        """Clean the decoded text (default: strip)."""
        return text.strip()

    def parse_output(self, text: str) -> tuple[str, list[Segment]]:
        """The transcript and its segments (speaker, timestamps) from the decoded text.

        Default: ``(postprocess(text), [])``; families with structured output override it.
        """
        return self.postprocess(text), []

    def max_new_tokens(self, n_audio_tokens: int) -> int | None:
        """Default cap on generated tokens for an utterance of ``n_audio_tokens`` audio
        embeddings (None: the pipeline's default). An explicit ``max_tokens`` wins."""
        return None

    def setup_files(self) -> dict[str, str]:
        """Small text files setup writes into the model folder (name -> content).

        ``export_llm`` writes each one whose content differs (atomically; a read-only
        folder only logs a warning). Default: none.
        """
        return {}
