"""The multimodal processor: audio in any form vLLM or a user passes, resampled the asrctl
way, and the prompt with its audio placeholder expanded to the encoder's output length.

``apply`` is overridden as a whole (its signature is the same in vLLM 0.26 and 0.32, the
hooks below it are not): the prompt arrives as token ids (0.32) or text (0.26); one
:data:`~asrctl.vllm_plugin.family.AUDIO_TOKEN` per audio is expanded to
``Adapter.audio_positions(samples)`` copies; a prompt without one (seed 000's ``""``) is
replaced by the family's own prompt around the audio, any text in it entering that prompt
as asrctl's chat API lets it (``Family.chat_text``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from vllm.inputs import mm_input
from vllm.multimodal.inputs import (
    MultiModalFieldConfig,
    MultiModalKwargsItems,
    PlaceholderRange,
)
from vllm.multimodal.parse import AudioProcessorItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
)

from asrctl.adapters.base import PromptOptions
from asrctl.vllm_plugin.family import (
    AUDIO_TOKEN,
    PluginConfig,
    caller_options,
    prompt_ids,
    tokenizer_for,
)

FIELD = "waveform"  # the model's keyword argument: one float32 waveform per audio
DEFAULT_MAX_SECONDS = 3600.0  # the dummy audio's cap for families without a window


class AudioParser(MultiModalDataParser):
    """vLLM's parser, with audio files (str/Path) accepted and every input resampled by
    asrctl's loader (soxr, as asrctl's pipeline), so both paths see the same samples."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__(target_sr=sample_rate, target_channels=1)
        self.sample_rate = sample_rate

    def _parse_audio_data(self, data: Any) -> Any:
        if isinstance(data, (str, Path)):
            data = [data]
        if isinstance(data, list) and any(isinstance(d, (str, Path, tuple)) for d in data):
            data = [self._load(d) for d in data]
        elif isinstance(data, tuple):
            data = [self._load(data)]
        return super()._parse_audio_data(data)

    def _load(self, item: Any) -> Any:
        from asrctl.audio import load_audio

        if isinstance(item, (str, Path)):
            return load_audio(str(item), sample_rate=self.sample_rate)
        if isinstance(item, tuple):
            audio, rate = item
            if isinstance(audio, torch.Tensor):
                audio = audio.numpy()
            return load_audio(
                np.asarray(audio), sample_rate=self.sample_rate, source_rate=int(rate)
            )
        return item


class AsrctlProcessingInfo(BaseProcessingInfo):
    @functools.cached_property
    def plugin(self) -> PluginConfig:
        return PluginConfig.from_hf(self.ctx.model_config.hf_config)

    @property
    def folder(self) -> str:
        return str(self.ctx.model_config.tokenizer)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": 1}

    def get_data_parser(self) -> MultiModalDataParser:
        return AudioParser(self.plugin.sample_rate)

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int] | None:
        return {"audio": self.plugin.adapter.audio_positions(self.max_samples)}

    @functools.cached_property
    def max_samples(self) -> int:
        """The longest audio one prompt holds: within the family's window, and its prompt
        (text and audio) leaving a position to generate in ``max_model_len``."""
        plugin = self.plugin
        seconds = plugin.max_audio_seconds or DEFAULT_MAX_SECONDS
        limit = self.ctx.model_config.max_model_len - 1

        def fits(n: int) -> bool:
            ids = prompt_ids(plugin, self.folder, PromptOptions(), n)
            return len(ids) - 1 + plugin.adapter.audio_positions(n) <= limit

        low, high = plugin.sample_rate // 10, round(seconds * plugin.sample_rate)
        if fits(high):
            return high
        while high - low > plugin.sample_rate // 100:  # 10 ms
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low


class AsrctlDummyInputs(BaseDummyInputsBuilder[AsrctlProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""  # the family's own prompt

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None
    ) -> Any:
        # low noise rather than vLLM's zeros: some frontends normalise by the level
        noise = np.random.default_rng(0).standard_normal(self.info.max_samples)
        audio = (1e-3 * noise).astype(np.float32)
        return {"audio": [audio] * mm_counts.get("audio", 0)}


class AsrctlAudioProcessor(BaseMultiModalProcessor[AsrctlProcessingInfo]):
    def _get_mm_fields_config(
        self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {FIELD: MultiModalFieldConfig.batched("audio")}

    def _get_prompt_updates(self, *args: Any, **kwargs: Any) -> Sequence[Any]:
        return []  # apply() expands the placeholders itself

    def apply(self, inputs: Any, timing_ctx: Any = None, *args: Any, **kwargs: Any) -> Any:
        info = self.info
        plugin = info.plugin
        items = inputs.mm_data_items.get_items("audio", AudioProcessorItems)
        waves = [np.asarray(items.get(i), dtype=np.float32) for i in range(items.get_count())]
        self._check_lengths(waves)
        ids = self._prompt(inputs, waves)
        placeholder = plugin.audio_token_id
        if ids.count(placeholder) != len(waves):
            raise ValueError(
                f"the prompt has {ids.count(placeholder)} audio placeholder(s) "
                f"{AUDIO_TOKEN} for {len(waves)} audio input(s)"
            )
        out: list[int] = []
        ranges = []
        audio = iter(waves)
        for token in ids:
            if token != placeholder:
                out.append(token)
                continue
            n = plugin.adapter.audio_positions(len(next(audio)))
            ranges.append(PlaceholderRange(offset=len(out), length=n))
            out += [placeholder] * n
        data = BatchFeature({FIELD: [torch.from_numpy(w) for w in waves]})
        mm_kwargs = MultiModalKwargsItems.from_hf_inputs(data, self._get_mm_fields_config(data, {}))
        return mm_input(
            prompt_token_ids=out,
            mm_kwargs=mm_kwargs,
            mm_hashes=self._hashes(inputs),
            mm_placeholders={"audio": ranges} if ranges else {},
        )

    def _check_lengths(self, waves: list[np.ndarray]) -> None:
        """Refuse audio longer than one prompt takes (the family's window, or what leaves
        a position to generate in max_model_len), naming both lengths."""
        info = self.info
        rate, limit = info.plugin.sample_rate, info.max_samples
        for wave in waves:
            if len(wave) > limit:
                title = info.plugin.adapter.family.title
                raise ValueError(
                    f"audio of {len(wave) / rate:.1f} s is longer than {title} takes in one "
                    f"prompt here ({limit / rate:.1f} s: its window and max_model_len); "
                    "split it first (vllm serve's /v1/audio/transcriptions splits long "
                    "uploads itself)"
                )

    def _prompt(self, inputs: Any, waves: list[np.ndarray]) -> list[int]:
        """The prompt's token ids, one placeholder per audio: the caller's if it has any
        placeholder, else the family's own prompt."""
        info = self.info
        plugin = info.plugin
        prompt = inputs.prompt
        if isinstance(prompt, str):  # vLLM 0.26: tokenized here, as vLLM would
            text = prompt
            kwargs = dict(getattr(inputs, "tokenization_kwargs", None) or {})
            ids = list(info.get_tokenizer().encode(prompt, **kwargs)) if prompt else []
        else:  # vLLM 0.32: token ids
            ids = list(prompt)
            text = tokenizer_for(info.folder).decode(ids, skip_special_tokens=True)
        if plugin.audio_token_id in ids or not waves:
            return ids
        options = caller_options(plugin, text)
        return prompt_ids(plugin, info.folder, options, len(waves[0]))

    def _hashes(self, inputs: Any) -> Any:
        get = getattr(self, "_get_mm_hashes", None)
        if get is not None:  # vLLM 0.32
            return get(inputs)
        return inputs.get_mm_hashes(self.info.model_id)  # vLLM 0.26
