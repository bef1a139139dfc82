"""asrctl as a vLLM general plugin: ``LLM(model=DIR/.asrctl/vllm)`` and ``vllm serve`` run
asrctl's models as vLLM models.

vLLM calls :func:`register` (entry point ``vllm.general_plugins``) in every process it
starts: the front end, the engine core and each worker. It only names the model class
(``"module:Class"``, imported by vLLM when a model folder asks for it), so it is cheap, and
it never raises: a plugin that fails would stop every vLLM start, asrctl's own engines too.

The model folder vLLM loads is written by ``asrctl setup DIR`` (:mod:`.setup`): the stock
LLM export of ``DIR/.asrctl/llm`` seen through a config naming :data:`ARCH`. The model class
(:mod:`.model`) runs the family's own audio encoder (``Adapter.audio_encoder``) and the
multimodal processor (:mod:`.processor`) builds the family's own prompt
(``Adapter.prompt_for_audio``): the plugin and asrctl's pipeline share one implementation.
"""

from __future__ import annotations

import logging

log = logging.getLogger("asrctl")

ARCH = "AsrctlAudioForConditionalGeneration"
MODEL_CLASS = "asrctl.vllm_plugin.model:AsrctlAudioForConditionalGeneration"

__all__ = ["ARCH", "register"]


def register() -> None:
    """Register the model class with vLLM's model registry (idempotent, never raises)."""
    try:
        from vllm import ModelRegistry

        if ARCH not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(ARCH, MODEL_CLASS)
    except Exception as e:  # any failure: vLLM must still start for every other model
        log.warning("asrctl's vLLM plugin is not registered: %s: %s", type(e).__name__, e)
