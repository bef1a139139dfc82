"""Fun-ASR-Nano-2512 (FunAudioLLM): SenseVoice SAN-M encoder + Transformer adaptor + Qwen3.

Faithful to FunASR's ``FunASRNano``: 80-bin Kaldi fbank on int16-scaled samples with a
Hamming window and no dither, LFR 7/6, no CMVN, encoder and adaptor in fp32, and only the
first ``fake_token_len`` (≈ L/8) adaptor frames spliced into a ChatML prompt. The Qwen3 LLM
is exported from ``llm.*`` of ``model.pt`` and run by vLLM as a stock ``Qwen3ForCausalLM``.
"""

from __future__ import annotations

import functools
import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import yaml

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

LLM_DIR = "Qwen3-0.6B"

# The prompt, as FunASR builds it (funasr/models/fun_asr_nano): system turn, then the user
# instruction followed by the audio, then the assistant turn opens.
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
USER = "<|im_start|>user\n{instruction}"
PREFIX = SYSTEM + USER
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
NO_THINK = "<think>\n\n</think>\n\n"
INSTRUCTION = "语音转写"
INSTRUCTION_WITH_LANGUAGE = "语音转写成{language}"
NO_ITN = "，不进行文本规整"
HOTWORDS = (
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n"
    "**上下文信息：**\n\n\n热词列表：[{hotwords}]\n"
)
# Language codes -> the names the model was trained with.
LANGUAGES = {"zh": "中文", "en": "英文", "ja": "日文", "ko": "韩文"}
# Output clean-up of FunASR's vLLM path: special-token remnants and silence marks.
_JUNK = re.compile(r"<\|[^|>]*\|>|/sil")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class PromptSettings:
    """What ``config.yaml`` sets that FunASR's ``FunASRNano.inference`` reads into the prompt.

    AutoModel passes the config's keys to ``inference`` as keyword defaults:
    ``dataset_conf.sys_prompt`` (False: no system turn), ``dataset_conf.do_think`` (False:
    an empty ``<think>`` block opens the answer), ``infer_with_assistant_input`` (True: the
    user turn is left open, no assistant turn), ``prev_text`` (the answer's start, also
    prepended to the output), ``language``/``hotwords`` (defaults for the instruction) and
    ``max_length`` (new tokens, 512 by default).
    """

    sys_prompt: bool = True
    do_think: bool = True
    assistant_input: bool = False
    prev_text: str = ""
    language: str | None = None
    hotwords: tuple[str, ...] = ()
    max_length: int | None = None

    @classmethod
    def from_config(cls, config: dict) -> PromptSettings:
        dataset = config.get("dataset_conf") or {}
        dataset = dataset if isinstance(dataset, dict) else {}
        hotwords = config.get("hotwords") or ()
        max_length = config.get("max_length")
        return cls(
            sys_prompt=bool(dataset.get("sys_prompt", True)),
            do_think=bool(dataset.get("do_think", True)),
            assistant_input=bool(config.get("infer_with_assistant_input", False)),
            prev_text=str(config.get("prev_text") or ""),
            language=None if config.get("language") is None else str(config["language"]),
            hotwords=tuple(str(h) for h in hotwords) if isinstance(hotwords, list) else (),
            max_length=int(max_length) if isinstance(max_length, int) else None,
        )


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if path.stat().st_size == 0:
        raise EOFError("the file is empty")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    return obj.get("state_dict", obj) if isinstance(obj, dict) else {}


class FunAsrNanoAdapter(Adapter):
    family: ClassVar[Family] = Family(
        name="fun-asr-nano",
        title="Fun-ASR-Nano",
        sample_rate=16000,
        max_audio_seconds=30.0,
        languages=LANGUAGES,
    )
    required: ClassVar[tuple[RequiredFile, ...]] = (
        RequiredFile("model.pt", "torch checkpoint with audio_encoder.*, audio_adaptor.*, llm.*"),
        RequiredFile("config.yaml", "FunASR config with model: FunASRNano"),
        RequiredFile(f"{LLM_DIR}", "Qwen3-0.6B config and tokenizer", is_dir=True),
        RequiredFile(f"{LLM_DIR}/config.json", "Qwen3 LLM config"),
        RequiredFile(f"{LLM_DIR}/tokenizer.json", "Qwen3 tokenizer"),
    )

    @classmethod
    def matches(cls, model_dir: Path) -> bool:
        conf = model_dir / "config.yaml"
        if conf.is_file() and conf.stat().st_size < (1 << 20):
            try:
                text = conf.read_text()
                data = yaml.safe_load(text)
            except (yaml.YAMLError, UnicodeDecodeError):
                # a broken config.yaml beside the checkpoint: claim it, so check() names the error
                return (model_dir / "model.pt").exists() or (model_dir / LLM_DIR).exists()
            return isinstance(data, dict) and data.get("model") == "FunASRNano"
        return (model_dir / "model.pt").exists() and (model_dir / LLM_DIR).exists()

    @functools.cached_property
    def config(self) -> dict:
        return yaml.safe_load((self.model_dir / "config.yaml").read_text()) or {}

    def check_contents(self) -> list[str]:
        try:
            config = yaml.safe_load((self.model_dir / "config.yaml").read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            detail = " ".join(str(e).split())
            return [f"config.yaml: not valid YAML ({detail})"]
        if not isinstance(config, dict):
            return [f"config.yaml: expected a mapping of settings, found {type(config).__name__}"]
        problems = self._check_checkpoint()
        for block in ("audio_encoder_conf", "audio_adaptor_conf", "frontend_conf"):
            if not isinstance(self.config.get(block), dict):
                problems.append(f"config.yaml: missing the {block} block")
        try:
            llm = json.loads((self.model_dir / LLM_DIR / "config.json").read_text())
            if llm.get("model_type") != "qwen3":
                problems.append(
                    f"{LLM_DIR}/config.json: model_type should be qwen3, "
                    f"not {llm.get('model_type')!r}"
                )
        except ValueError as e:
            problems.append(f"{LLM_DIR}/config.json: not valid JSON ({e})")
        return problems

    def _check_checkpoint(self) -> list[str]:
        """model.pt loads as a torch checkpoint holding the three modules."""
        try:
            state = _load_state(self.model_dir / "model.pt")
        except Exception as e:  # torch.load raises many types on a truncated or foreign file
            if isinstance(e, pickle.UnpicklingError):
                first = "it does not unpickle to tensors"
            else:
                first = (str(e).strip().splitlines() or [""])[0][:200]
            return [
                "model.pt: not a loadable torch checkpoint (truncated, empty or another kind "
                f"of file; {type(e).__name__}: {first}); re-download it"
            ]
        prefixes = ("audio_encoder.", "audio_adaptor.", "llm.")
        missing = [p for p in prefixes if not any(k.startswith(p) for k in state)]
        return [f"model.pt: no {p}* tensors" for p in missing]

    def tensor_groups(self) -> dict[str, int]:
        """Tensor count per module of model.pt (for ``asrctl verify``)."""
        groups: dict[str, int] = {}
        for key in _load_state(self.model_dir / "model.pt"):
            group = key.split(".")[0]
            groups[group] = groups.get(group, 0) + 1
        return groups

    @property
    def layout(self) -> str:
        """The on-disk layout recognised (for ``asrctl verify``)."""
        return "FunASR release (model.pt + config.yaml + Qwen3-0.6B/)"

    def verify(self) -> list[str]:
        """Tensor shapes of model.pt against config.yaml and the Qwen3 config (asrctl verify)."""
        from asrctl.adapters.fun_asr_nano_verify import check_shapes

        return check_shapes(self.model_dir, self.config, _load_state(self.model_dir / "model.pt"))

    def llm_export(self) -> LlmExport:
        llm_dir = self.model_dir / LLM_DIR
        config = json.loads((llm_dir / "config.json").read_text())
        config["architectures"] = ["Qwen3ForCausalLM"]  # a generator, not a pooling model
        from asrctl.export import TOKENIZER_FILES

        sources = [self.model_dir / "model.pt", llm_dir / "config.json"]
        sources += [llm_dir / n for n in TOKENIZER_FILES if (llm_dir / n).is_file()]
        return LlmExport(
            config=config,
            tokenizer_dir=llm_dir,
            sources=tuple(sources),
            config_source=f"{LLM_DIR}/config.json",
        )

    def llm_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in _load_state(self.model_dir / "model.pt").items():
            if name.startswith("llm."):
                yield name[len("llm.") :], tensor

    def audio_encoder(self, device: str, dtype: torch.dtype) -> AudioEncoder:
        from asrctl.models.fun_asr_nano import FunAsrNanoAudio

        state = _load_state(self.model_dir / "model.pt")
        return FunAsrNanoAudio.from_checkpoint(
            self.config, state, device=device, dtype=dtype, model_dir=self.model_dir
        )

    def audio_positions(self, num_samples: int) -> int:
        from asrctl.models.fun_asr_nano import audio_positions

        return audio_positions(self.config, num_samples)

    @functools.cached_property
    def settings(self) -> PromptSettings:
        return PromptSettings.from_config(self.config)

    def prompt(self, options: PromptOptions) -> Prompt:
        settings = self.settings
        instruction = ""
        hotwords = options.hotwords or settings.hotwords
        if hotwords:
            instruction += HOTWORDS.format(hotwords=", ".join(hotwords))
        if options.language is None and settings.language is not None:
            language = self._language_name(settings.language, verbatim=True)
        else:
            language = self._language_name(options.language)
        instruction += (
            INSTRUCTION_WITH_LANGUAGE.format(language=language) if language else INSTRUCTION
        )
        if not options.itn:
            instruction += NO_ITN
        user = USER.format(instruction=instruction + "：")
        prefix = (SYSTEM if settings.sys_prompt else "") + user
        suffix = "" if settings.assistant_input else SUFFIX
        if not settings.do_think:
            suffix += NO_THINK
        return Prompt(prefix=prefix, suffix=suffix + settings.prev_text)

    def max_new_tokens(self, n_audio_tokens: int) -> int | None:
        """config.yaml's ``max_length`` (FunASR's max_new_tokens), if it sets one."""
        return self.settings.max_length

    def _language_name(self, language: str | None, *, verbatim: bool = False) -> str | None:
        if language is None or language.lower() == "auto":
            return None
        if language in LANGUAGES.values():
            return language
        if verbatim and language.lower() not in LANGUAGES:
            return language  # config.yaml's language goes into the prompt as written
        try:
            return LANGUAGES[language.lower()]
        except KeyError:
            raise OptionsError(
                f"Fun-ASR-Nano does not support language {language!r}",
                hint=f"use one of {', '.join(LANGUAGES)} or auto",
            ) from None

    def postprocess(self, text: str) -> str:
        # FunASR prepends prev_text to the decoded answer
        return _SPACES.sub(" ", _JUNK.sub(" ", self.settings.prev_text + text)).strip()
