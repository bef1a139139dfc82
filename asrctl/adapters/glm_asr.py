"""GLM-ASR-Nano-2512 (zai-org) in the transformers-native ``glmasr`` layout.

Faithful to transformers' ``GlmAsrProcessor`` + ``GlmAsrForConditionalGeneration``:

* Files: ``config.json`` (``model_type: glmasr``), ``model.safetensors`` with the legacy
  prefixes ``audio_tower.*``, ``multi_modal_projector.*`` and ``language_model.*``, the
  tokenizer, ``chat_template.jinja`` and ``preprocessor_config.json`` (WhisperFeatureExtractor,
  128 mel bins).
* Audio (``asrctl.models.glm_asr``): Whisper log-mel in 30 s windows with a mask, the
  encoder with partial rotary embeddings (transformers' ``GlmAsrEncoder``, which loads the
  checkpoint's ``audio_tower.*`` exactly), the projector merging 4 frames. Audio longer
  than 30 s is cut into windows whose audio tokens are concatenated into one prompt, as the
  processor does, up to its ``max_audio_len`` (655 s; the processor keeps only the first
  ``655 // 30 = 21`` windows, i.e. 630 s, and so do we, with a warning).
* Prompt: the model's own ``chat_template.jinja`` rendered for one user turn holding the
  audio and ``Please transcribe this audio into text`` (the processor's default
  transcription prompt), with the generation prompt; the text before and after the audio
  token (``<|pad|>``, checked against ``config.audio_token_id``) is the prefix and suffix.
* LLM: ``language_model.model.*`` exported as a stock ``LlamaForCausalLM`` (tied
  embeddings; ``language_model.lm_head.weight`` is kept only when the config unties it).
  Greedy decoding; the text is decoded without special tokens and stripped.

The older remote-code layout (``AutoModelForCausalLM`` through ``auto_map``,
``config.merge_factor``, ``audio_encoder.*`` keys) is detected and refused with
instructions to convert.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from asrctl.adapters.base import (
    Adapter,
    AudioEncoder,
    Family,
    LlmExport,
    Prompt,
    PromptOptions,
    RequiredFile,
)
from asrctl.errors import OptionsError

if TYPE_CHECKING:
    import torch

MODEL_TYPE = "glmasr"
WEIGHTS = "model.safetensors"
AUDIO_TOKEN = "<|pad|>"  # GlmAsrProcessor's audio_token default
TRANSCRIBE_PROMPT = "Please transcribe this audio into text"  # its default_transcription_prompt
MAX_AUDIO_SECONDS = 655.0  # GlmAsrProcessor's max_audio_len (≈ 8192 LLM positions)
LLM_PREFIX = "language_model."
CONVERT_HINT = (
    "this is the older remote-code GLM-ASR-Nano layout (AutoModelForCausalLM with "
    "trust_remote_code, config.merge_factor); asrctl needs the transformers-native layout "
    "that zai-org/GLM-ASR-Nano-2512 has shipped since 2025-12-27: download the current "
    "revision (huggingface-cli download zai-org/GLM-ASR-Nano-2512), or convert the weights "
    "with transformers' src/transformers/models/glmasr/convert_glmasr_weights_to_hf.py "
    "--src OLD/model.safetensors --dst NEW/model.safetensors and copy config.json, "
    "generation_config.json, tokenizer.json, tokenizer_config.json, chat_template.jinja and "
    "preprocessor_config.json from the current release into NEW/"
)


def _read_json(path: Path) -> dict | None:
    try:
        if path.is_file() and path.stat().st_size < (1 << 20):
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return None


def is_legacy_config(config: dict) -> bool:
    """The remote-code layout: ``merge_factor`` at the top, or GLM-ASR code via auto_map."""
    if config.get("model_type") == MODEL_TYPE:
        return False
    if "merge_factor" in config and ("whisper_config" in config or "auto_map" in config):
        return True
    causal = str((config.get("auto_map") or {}).get("AutoModelForCausalLM", "")).lower()
    return "asr" in causal and "glm" in (causal + str(config.get("model_type", ""))).lower()


def render_chat_template(template: str, messages: list[dict], **kwargs: Any) -> str:
    """Render a chat template as transformers does (sandboxed, trim/lstrip blocks)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise OptionsError(f"chat_template.jinja: {message}")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, **kwargs)


class GlmAsrAdapter(Adapter):
    family: ClassVar[Family] = Family(
        name="glm-asr-nano",
        title="GLM-ASR-Nano",
        sample_rate=16000,
        max_audio_seconds=MAX_AUDIO_SECONDS,
        chat_text="instruction",
    )
    required: ClassVar[tuple[RequiredFile, ...]] = (
        RequiredFile("config.json", "GlmAsrConfig (model_type glmasr)"),
        RequiredFile(WEIGHTS, "weights: audio_tower.*, multi_modal_projector.*, language_model.*"),
        RequiredFile("tokenizer.json", "the GLM tokenizer"),
        RequiredFile("tokenizer_config.json", "the tokenizer's settings"),
        RequiredFile("chat_template.jinja", "the chat template that places the audio"),
        RequiredFile("preprocessor_config.json", "WhisperFeatureExtractor settings (128 mels)"),
    )

    @classmethod
    def matches(cls, model_dir: Path) -> bool:
        config = _read_json(model_dir / "config.json")
        if config is None:
            return False
        archs = config.get("architectures") or []
        return (
            config.get("model_type") == MODEL_TYPE
            or "GlmAsrForConditionalGeneration" in archs
            or is_legacy_config(config)
        )

    @functools.cached_property
    def config(self) -> dict:
        return _read_json(self.model_dir / "config.json") or {}

    @functools.cached_property
    def preprocessor(self) -> dict:
        return _read_json(self.model_dir / "preprocessor_config.json") or {}

    @property
    def text_config(self) -> dict:
        return self.config.get("text_config") or {}

    def check(self) -> list[str]:
        if is_legacy_config(self.config):
            return [f"config.json: {CONVERT_HINT}"]
        return super().check()

    def check_contents(self) -> list[str]:
        problems = []
        if self.config.get("model_type") != MODEL_TYPE:
            problems.append(
                f"config.json: model_type should be {MODEL_TYPE}, "
                f"not {self.config.get('model_type')!r}"
            )
        for block in ("audio_config", "text_config"):
            if not isinstance(self.config.get(block), dict):
                problems.append(f"config.json: missing the {block} block")
        text_type = self.text_config.get("model_type", "llama")
        if text_type != "llama":
            problems.append(f"config.json: text_config.model_type should be llama, not {text_type}")
        pre = self.preprocessor
        if (
            pre.get("feature_extractor_type", "WhisperFeatureExtractor")
            != "WhisperFeatureExtractor"
        ):
            problems.append(
                "preprocessor_config.json: feature_extractor_type should be "
                f"WhisperFeatureExtractor, not {pre.get('feature_extractor_type')!r}"
            )
        mels = (self.config.get("audio_config") or {}).get("num_mel_bins", 128)
        if int(pre.get("feature_size", 80)) != int(mels):
            problems.append(
                f"preprocessor_config.json: feature_size {pre.get('feature_size')} differs "
                f"from audio_config.num_mel_bins {mels}"
            )
        if not problems:
            problems += self._check_tokens()
        if not problems:
            problems += self._check_keys()
        return problems

    def _check_tokens(self) -> list[str]:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            return [f"tokenizer.json: cannot be loaded ({e})"]
        audio_id = tok.token_to_id(AUDIO_TOKEN)
        if audio_id is None:
            return [f"tokenizer.json: no {AUDIO_TOKEN} token (the audio placeholder)"]
        expected = self.config.get("audio_token_id", audio_id)
        if expected != audio_id:
            return [
                f"config.json: audio_token_id {expected} is not {AUDIO_TOKEN} "
                f"(id {audio_id} in tokenizer.json)"
            ]
        try:
            self.prompt(PromptOptions())
        except OptionsError as e:
            return [str(e)]
        return []

    def _check_keys(self) -> list[str]:
        from safetensors import safe_open

        try:
            with safe_open(str(self.model_dir / WEIGHTS), framework="pt") as f:
                keys = set(f.keys())
        except Exception as e:  # safetensors raises its own error types
            return [f"{WEIGHTS}: cannot be read ({e})"]
        needed = (
            "audio_tower.conv1.weight",
            "multi_modal_projector.linear_1.weight",
            "multi_modal_projector.linear_2.weight",
            "language_model.model.embed_tokens.weight",
        )
        missing = [k for k in needed if k not in keys]
        if missing:
            if any(k.startswith("audio_encoder.") for k in keys):
                return [f"{WEIGHTS}: {CONVERT_HINT}"]
            return [f"{WEIGHTS}: missing {', '.join(missing)}"]
        return []

    # --- the LLM ----------------------------------------------------------------------

    @property
    def tied(self) -> bool:
        return bool(
            self.config.get(
                "tie_word_embeddings", self.text_config.get("tie_word_embeddings", True)
            )
        )

    def llm_export(self) -> LlmExport:
        from asrctl.export import TOKENIZER_FILES

        text = dict(self.text_config)
        text.pop("architectures", None)
        config = {
            **text,
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "tie_word_embeddings": self.tied,
        }
        dtype = self.config.get("dtype") or self.config.get("torch_dtype")
        if dtype and "dtype" not in config and "torch_dtype" not in config:
            config["dtype"] = dtype
        sources = [self.model_dir / WEIGHTS, self.model_dir / "config.json"]
        sources += [self.model_dir / n for n in TOKENIZER_FILES if (self.model_dir / n).is_file()]
        return LlmExport(config=config, tokenizer_dir=self.model_dir, sources=tuple(sources))

    def llm_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        from safetensors import safe_open

        with safe_open(str(self.model_dir / WEIGHTS), framework="pt") as f:
            for name in f.keys():
                if not name.startswith(LLM_PREFIX):
                    continue
                key = name[len(LLM_PREFIX) :]
                if key == "lm_head.weight" and self.tied:
                    continue  # tied to model.embed_tokens.weight
                yield key, f.get_tensor(name)

    # --- audio and prompt ---------------------------------------------------------------

    def audio_encoder(self, device: str, dtype: torch.dtype) -> AudioEncoder:
        from safetensors import safe_open

        from asrctl.models.glm_asr import GlmAsrAudio, WhisperFeatureOptions

        with safe_open(str(self.model_dir / WEIGHTS), framework="pt") as f:
            state = {
                k: f.get_tensor(k)
                for k in f.keys()
                if k.startswith(("audio_tower.", "multi_modal_projector."))
            }
        return GlmAsrAudio.from_checkpoint(
            self.config,
            WhisperFeatureOptions.from_config(self.preprocessor),
            state,
            max_audio_seconds=MAX_AUDIO_SECONDS,
            device=device,
            dtype=dtype,
        )

    def audio_positions(self, num_samples: int) -> int:
        from asrctl.models.glm_asr import WhisperFeatureOptions, audio_positions

        options = WhisperFeatureOptions.from_config(self.preprocessor)
        return audio_positions(num_samples, options, MAX_AUDIO_SECONDS)

    @functools.cached_property
    def _rendered(self) -> tuple[str, str]:
        return self._render(TRANSCRIBE_PROMPT)

    @functools.cached_property
    def _template(self) -> str:
        return (self.model_dir / "chat_template.jinja").read_text()

    def _render(self, instruction: str) -> tuple[str, str]:
        """The prompt text around the audio: the model's chat template rendered for one
        user message of the audio and ``instruction``."""
        template = self._template
        messages = [
            {
                "role": "user",
                "content": [{"type": "audio"}, {"type": "text", "text": instruction}],
            }
        ]
        text = render_chat_template(template, messages, add_generation_prompt=True)
        if text.count(AUDIO_TOKEN) != 1:
            raise OptionsError(
                f"chat_template.jinja: rendering one audio item gave {text.count(AUDIO_TOKEN)} "
                f"{AUDIO_TOKEN} placeholders, expected 1"
            )
        prefix, _, suffix = text.partition(AUDIO_TOKEN)
        return prefix, suffix

    def prompt(self, options: PromptOptions) -> Prompt:
        if options.hotwords:
            raise OptionsError("GLM-ASR-Nano has no hotword prompt", hint="drop --hotwords")
        if options.language not in (None, "auto"):
            raise OptionsError(
                "GLM-ASR-Nano detects the language itself", hint="drop --language or pass auto"
            )
        # itn: the model has no switch for it ("where the model supports it"): ignored.
        if options.instruction is None:
            prefix, suffix = self._rendered
        else:  # a chat client's own instruction, as GLM-ASR's vLLM users send it
            prefix, suffix = self._render(options.instruction)
        return Prompt(prefix=prefix, suffix=suffix)
