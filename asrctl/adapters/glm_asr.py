"""GLM-ASR-Nano-2512 (zai-org) in the transformers-native ``glmasr`` layout.

Faithful to transformers' ``GlmAsrProcessor`` + ``GlmAsrForConditionalGeneration``:

* Files: ``config.json`` (``model_type: glmasr``), ``model.safetensors`` (or shards with
  an index) with the release prefixes ``audio_tower.*``, ``multi_modal_projector.*`` and
  ``language_model.*`` — or any other naming transformers' ``from_pretrained`` loads
  (``language_model.model.model.*`` from ``save_pretrained``, the in-memory
  ``model.audio_tower.*``/``model.language_model.*``; see :mod:`asrctl.adapters._hf`), the
  tokenizer, ``chat_template.jinja`` and ``preprocessor_config.json`` (or transformers 5's
  ``processor_config.json``, whose ``audio_token`` and ``default_transcription_prompt`` are
  honoured too) (WhisperFeatureExtractor,
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
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from asrctl.adapters._hf import Checkpoint, KeyLayout, config_dtype, set_dtype, weight_files
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
KEYS = KeyLayout(audio=("audio_tower", "multi_modal_projector"))
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
        RequiredFile("tokenizer.json", "the GLM tokenizer"),
        RequiredFile("tokenizer_config.json", "the tokenizer's settings"),
        RequiredFile("chat_template.jinja", "the chat template that places the audio"),
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
    def processor(self) -> dict:
        """``processor_config.json`` (transformers 5 ``GlmAsrProcessor.save_pretrained``)."""
        return _read_json(self.model_dir / "processor_config.json") or {}

    @functools.cached_property
    def preprocessor(self) -> dict:
        """The feature extractor's settings: ``preprocessor_config.json``, or the
        ``feature_extractor`` block of ``processor_config.json`` (transformers 5 writes that)."""
        own = _read_json(self.model_dir / "preprocessor_config.json")
        if own is not None:
            return own
        block = self.processor.get("feature_extractor")
        return block if isinstance(block, dict) else {}

    @property
    def audio_token(self) -> str:
        return str(self.processor.get("audio_token") or AUDIO_TOKEN)

    @property
    def transcribe_prompt(self) -> str:
        return str(self.processor.get("default_transcription_prompt") or TRANSCRIBE_PROMPT)

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
        if not pre:
            problems.append(
                "missing preprocessor_config.json (or processor_config.json with a "
                "feature_extractor block) — WhisperFeatureExtractor settings (128 mels)"
            )
        elif (
            pre.get("feature_extractor_type", "WhisperFeatureExtractor")
            != "WhisperFeatureExtractor"
        ):
            problems.append(
                "preprocessor_config.json: feature_extractor_type should be "
                f"WhisperFeatureExtractor, not {pre.get('feature_extractor_type')!r}"
            )
        mels = (self.config.get("audio_config") or {}).get("num_mel_bins", 128)
        if pre and int(pre.get("feature_size", 80)) != int(mels):
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
        token = self.audio_token
        audio_id = tok.token_to_id(token)
        if audio_id is None:
            return [f"tokenizer.json: no {token} token (the audio placeholder)"]
        expected = self.config.get("audio_token_id", audio_id)
        if expected != audio_id:
            return [
                f"config.json: audio_token_id {expected} is not {token} "
                f"(id {audio_id} in tokenizer.json)"
            ]
        try:
            self.prompt(PromptOptions())
        except OptionsError as e:
            return [str(e)]
        return []

    @functools.cached_property
    def checkpoint(self) -> Checkpoint:
        """The weights under release names, whichever layout transformers wrote."""
        return Checkpoint.open(self.model_dir, KEYS)

    @property
    def layout(self) -> str:
        """The on-disk layout recognised (for ``asrctl verify``)."""
        return f"transformers glmasr, {self.checkpoint.layout}"

    def tensor_groups(self) -> dict[str, int]:
        """Tensor count per module, under release names (for ``asrctl verify``)."""
        return self.checkpoint.groups()

    def _check_keys(self) -> list[str]:
        try:
            files = weight_files(self.model_dir)
        except (ValueError, KeyError) as e:
            return [f"model.safetensors.index.json: unreadable ({e})"]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            return [
                f"missing weights file {n} — {WEIGHTS} or the shards of "
                "model.safetensors.index.json (audio_tower.*, multi_modal_projector.*, "
                "language_model.*)"
                for n in absent
            ]
        try:
            checkpoint = self.checkpoint
        except ValueError as e:
            return [str(e)]
        needed = (
            "audio_tower.conv1.weight",
            "multi_modal_projector.linear_1.weight",
            "multi_modal_projector.linear_2.weight",
            "language_model.model.embed_tokens.weight",
        )
        missing = [k for k in needed if k not in checkpoint.names]
        if missing:
            legacy = ("audio_encoder.", "model.audio_encoder.")
            if any(k.startswith(legacy) for k in checkpoint.unknown):
                return [f"{WEIGHTS}: {CONVERT_HINT}"]
            return [f"weights: missing {', '.join(missing)} (under any name transformers loads)"]
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
        # the checkpoint's dtype: the top-level one (what from_pretrained(dtype="auto") uses)
        set_dtype(config, config_dtype(self.config, self.text_config) or "bfloat16")
        index = self.model_dir / "model.safetensors.index.json"
        sources = [*weight_files(self.model_dir), self.model_dir / "config.json"]
        sources += [index] if index.is_file() else []
        sources += [self.model_dir / n for n in TOKENIZER_FILES if (self.model_dir / n).is_file()]
        return LlmExport(
            config=config,
            tokenizer_dir=self.model_dir,
            sources=tuple(sources),
            config_source="config.json (text_config)",
        )

    def llm_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.checkpoint.llm_tensors(tied=self.tied)

    # --- audio and prompt ---------------------------------------------------------------

    def audio_encoder(self, device: str, dtype: torch.dtype) -> AudioEncoder:
        """The audio path; ``$ASRCTL_GLM_TRIM`` (opt-in) trims the 30 s windows."""
        from asrctl.models.glm_asr import TRIM_ENV, GlmAsrAudio, WhisperFeatureOptions, trim_frames

        features = WhisperFeatureOptions.from_config(self.preprocessor)
        trim = trim_frames(os.environ.get(TRIM_ENV), features)  # fails before the load
        state = dict(self.checkpoint.tensors(lambda n: n.startswith(KEYS.audio)))
        return GlmAsrAudio.from_checkpoint(
            self.config,
            features,
            state,
            max_audio_seconds=MAX_AUDIO_SECONDS,
            device=device,
            dtype=dtype,
            trim=trim,
        )

    def audio_positions(self, num_samples: int) -> int:
        from asrctl.models.glm_asr import WhisperFeatureOptions, audio_positions

        options = WhisperFeatureOptions.from_config(self.preprocessor)
        return audio_positions(num_samples, options, MAX_AUDIO_SECONDS)

    @functools.cached_property
    def _rendered(self) -> tuple[str, str]:
        return self._render(self.transcribe_prompt)

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
        token = self.audio_token
        if text.count(token) != 1:
            raise OptionsError(
                f"chat_template.jinja: rendering one audio item gave {text.count(token)} "
                f"{token} placeholders, expected 1"
            )
        prefix, _, suffix = text.partition(token)
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
