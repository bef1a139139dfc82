"""What the plugin reads from a vLLM model folder written by ``asrctl setup``: the family,
the original model folder, the audio placeholder, and prompts as token ids.

Shared by the multimodal processor (front-end process), the transcription hooks (front
end) and the model (workers); everything here is cheap and cached per folder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asrctl.adapters.base import Adapter, PromptOptions

if TYPE_CHECKING:
    from tokenizers import Tokenizer

CONFIG_KEY = "asrctl"  # the section of the vLLM folder's config.json the plugin reads
AUDIO_TOKEN = "<|asrctl_audio|>"  # the placeholder added to the folder's tokenizer


@dataclass(frozen=True)
class PluginConfig:
    """The ``asrctl`` section of a vLLM folder's config.json."""

    family: str
    model_dir: Path  # the original model folder (the adapter reads it)
    text_architectures: tuple[str, ...]  # the stock LLM class vLLM builds inside
    audio_token_id: int
    sample_rate: int
    max_audio_seconds: float | None

    @classmethod
    def from_hf(cls, hf_config: Any) -> PluginConfig:
        """From vLLM's ``model_config.hf_config`` (a transformers config)."""
        data = getattr(hf_config, CONFIG_KEY, None)
        if not isinstance(data, dict):
            raise ValueError(
                f"this folder's config.json has no {CONFIG_KEY!r} section: "
                "prepare the model folder with `asrctl setup DIR` and load DIR/.asrctl/vllm"
            )
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PluginConfig:
        seconds = data.get("max_audio_seconds")
        return cls(
            family=str(data["family"]),
            model_dir=Path(data["model_dir"]),
            text_architectures=tuple(data["text_architectures"]),
            audio_token_id=int(data["audio_token_id"]),
            sample_rate=int(data["sample_rate"]),
            max_audio_seconds=None if seconds is None else float(seconds),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model_dir": str(self.model_dir),
            "text_architectures": list(self.text_architectures),
            "audio_token": AUDIO_TOKEN,
            "audio_token_id": self.audio_token_id,
            "sample_rate": self.sample_rate,
            "max_audio_seconds": self.max_audio_seconds,
        }

    @property
    def adapter(self) -> Adapter:
        return adapter_for(self.family, str(self.model_dir))


@functools.lru_cache(maxsize=8)
def adapter_for(family: str, model_dir: str) -> Adapter:
    """The family's adapter over the original folder (not re-detected, not re-checked:
    ``asrctl setup`` did both)."""
    from asrctl.adapters.registry import adapter_class

    return adapter_class(family)(Path(model_dir))


@functools.lru_cache(maxsize=8)
def tokenizer_for(folder: str) -> Tokenizer:
    """The vLLM folder's tokenizer, read as asrctl's engine reads it (``tokenizers``)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def prompt_ids(
    plugin: PluginConfig, folder: str, options: PromptOptions, num_samples: int
) -> list[int]:
    """The family's own prompt for ``num_samples`` of audio as token ids, with ONE audio
    placeholder between its prefix and suffix (the processor expands it). Tokenized
    exactly as asrctl's pipeline tokenizes them (no special tokens added)."""
    adapter = plugin.adapter
    prompt = adapter.prompt_for_audio(options, num_samples / plugin.sample_rate)
    tokenizer = tokenizer_for(folder)
    prefix = tokenizer.encode(prompt.prefix, add_special_tokens=False).ids if prompt.prefix else []
    suffix = tokenizer.encode(prompt.suffix, add_special_tokens=False).ids if prompt.suffix else []
    return [*prefix, plugin.audio_token_id, *suffix]


def caller_options(plugin: PluginConfig, text: str) -> PromptOptions:
    """How a caller's text without a placeholder enters the family's prompt, as in asrctl's
    chat API (``Family.chat_text``): hotwords, an instruction, or nothing."""
    text = text.strip()
    how = plugin.adapter.family.chat_text
    if text and how == "hotwords":
        from asrctl.server.openai_api import split_hotwords

        return PromptOptions(hotwords=split_hotwords(text))
    if text and how == "instruction":
        return PromptOptions(instruction=text)
    return PromptOptions()
