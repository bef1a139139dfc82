"""The vLLM model class: the family's stock LLM built by vLLM, the family's own audio
encoder (``Adapter.audio_encoder``: features computed on the device, no fixed window)
feeding it through vLLM's multimodal path.

One class serves every family: the folder's ``asrctl`` config section names the family and
the original model folder; the LLM is the architecture asrctl exports (Qwen2, Qwen3,
Llama), built with ``init_vllm_registered_model``, its weights the export's. The encoder
is not a submodule: it loads its weights from the original folder itself, so vLLM's
loader sees only the LLM's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, cast

import torch
from torch import nn
from vllm.config import ModelConfig, SpeechToTextConfig, VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsTranscription
from vllm.model_executor.models.utils import (
    _merge_multimodal_embeddings,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from asrctl.adapters.base import PromptOptions
from asrctl.errors import AsrctlError
from asrctl.models.encoder import AudioEncoder
from asrctl.vllm_plugin.family import AUDIO_TOKEN, PluginConfig, prompt_ids
from asrctl.vllm_plugin.processor import (
    FIELD,
    AsrctlAudioProcessor,
    AsrctlDummyInputs,
    AsrctlProcessingInfo,
)

log = logging.getLogger("asrctl")

SPLIT_WINDOW = 1600  # samples: vLLM's default quiet-window search for long uploads


@contextlib.contextmanager
def _float32_defaults() -> Iterator[None]:
    """Build the encoder as asrctl does, whatever default dtype vLLM set for the LLM."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def _encoder_precision(device: torch.device) -> Iterator[None]:
    """asrctl's ``auto`` encoder precision: TensorFloat-32 matmuls on a GPU (float32
    weights), full float32 elsewhere; restored afterwards (the LLM may be float32)."""
    if device.type != "cuda":
        yield
        return
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


@MULTIMODAL_REGISTRY.register_processor(
    AsrctlAudioProcessor, info=AsrctlProcessingInfo, dummy_inputs=AsrctlDummyInputs
)
class AsrctlAudioForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsTranscription):
    """asrctl's model families as one vLLM model (see the module docstring)."""

    supported_languages: ClassVar[Mapping[str, str]] = {}  # the family decides
    supports_transcription_only: ClassVar[bool] = False  # chat and completions too

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.plugin = PluginConfig.from_hf(config)
        self.language_model: Any = init_vllm_registered_model(
            vllm_config=vllm_config,
            hf_config=config,
            prefix=maybe_prefix(prefix, "language_model"),
            architectures=list(self.plugin.text_architectures),
        )
        self.make_empty_intermediate_tensors = getattr(
            self.language_model, "make_empty_intermediate_tensors", None
        )
        self.vocab_size = int(config.vocab_size)
        self.device = torch.device(str(vllm_config.device_config.device))
        self.llm_dtype = vllm_config.model_config.dtype
        with _float32_defaults():
            encoder = self.plugin.adapter.audio_encoder(str(self.device), torch.float32)
        # a tuple, not an attribute: the encoder is no submodule (its weights are its own)
        self._encoder: tuple[AudioEncoder] = (encoder,)

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return AUDIO_TOKEN if modality.startswith("audio") else None

    def get_language_model(self) -> Any:
        return self.language_model

    # -- audio ---------------------------------------------------------------------------

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor]:
        data = kwargs.get(FIELD)
        if data is None:
            return []
        # one tensor per audio; vLLM stacks them when their lengths agree
        if isinstance(data, torch.Tensor):
            waves = list(data.unbind(0)) if data.dim() > 1 else [data]
        else:
            waves = list(cast("Iterable[torch.Tensor]", data))
        batch = [w.to(self.device, torch.float32).reshape(-1) for w in waves]
        with _encoder_precision(self.device):
            embeds = self._encoder[0](batch)
        return [e.to(self.llm_dtype) for e in embeds]

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: Any = None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # the placeholder may lie past the embedding table: its rows are replaced anyway
        ids = input_ids.clamp(max=self.vocab_size - 1)
        if is_multimodal is not None:
            ids = ids.masked_fill(is_multimodal.to(ids.device), 0)
        embeds = self.language_model.embed_input_ids(ids)
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return embeds
        assert is_multimodal is not None
        return _merge_multimodal_embeddings(
            inputs_embeds=embeds,
            multimodal_embeddings=multimodal_embeddings,
            is_multimodal=is_multimodal,
        )

    # -- the LLM -------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> Any:
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = self.language_model.load_weights(weights)
        return {f"language_model.{name}" for name in loaded}

    # -- /v1/audio/transcriptions ----------------------------------------------------------

    @classmethod
    def validate_language(cls, language: str | None) -> str | None:
        return language  # the family's prompt decides (an unsupported one: a 400)

    @classmethod
    def get_speech_to_text_config(
        cls, model_config: ModelConfig, task_type: str
    ) -> SpeechToTextConfig:
        plugin = PluginConfig.from_hf(model_config.hf_config)
        window = plugin.max_audio_seconds
        return SpeechToTextConfig(
            sample_rate=plugin.sample_rate,
            max_audio_clip_s=None if window is None else int(window),
            min_energy_split_window_size=None if window is None else SPLIT_WINDOW,
        )

    @classmethod
    def get_generation_prompt(cls, stt_params: Any) -> Any:
        if getattr(stt_params, "task_type", "transcribe") != "transcribe":
            raise ValueError("asrctl's models transcribe; they do not translate")
        model_config = stt_params.model_config
        plugin = PluginConfig.from_hf(model_config.hf_config)
        language = stt_params.language
        from asrctl.server.openai_api import split_hotwords  # as asrctl serve splits them

        hotwords = getattr(stt_params, "hotwords", None)  # vLLM's extension field
        options = PromptOptions(
            language=language, hotwords=split_hotwords(hotwords) if hotwords else ()
        )
        audio = stt_params.audio
        try:
            ids = prompt_ids(plugin, str(model_config.tokenizer), options, len(audio))
        except AsrctlError as e:
            raise ValueError(str(e)) from None
        return {
            "prompt_token_ids": ids,
            "multi_modal_data": {"audio": (audio, int(stt_params.stt_config.sample_rate))},
        }

    @classmethod
    def get_num_audio_tokens(
        cls, audio_duration_s: float, stt_config: SpeechToTextConfig, model_config: ModelConfig
    ) -> int | None:
        plugin = PluginConfig.from_hf(model_config.hf_config)
        return plugin.adapter.audio_positions(round(audio_duration_s * plugin.sample_rate))
