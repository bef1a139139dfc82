"""FireRedASR-LLM-L (FireRedTeam): Conformer encoder + adapter + Qwen2-7B-Instruct with LoRA.

Faithful to the ``fireredasr`` package (FireRedASR v1; FireRedASR2-LLM uses the same layout):

* Front end: 80-bin Kaldi fbank of int16-scaled samples (povey window, no dither), then the
  global CMVN of ``cmvn.ark``; no LFR. At most 30 s per pass (the README's limit).
* Encoder and adapter (``asrctl.models.conformer``) in fp32, weights from ``model.pth.tar``
  (over any in ``asr_encoder.pth.tar``, as the reference loads them), shape from the AED
  ``args`` pickled in ``asr_encoder.pth.tar``; one audio token per 80 ms.
* Prompt: ``<|im_start|>user\\n<speech>请转写音频为文字<|im_end|>\\n<|im_start|>assistant\\n``
  with ``<speech>`` replaced by every adapter frame; no system turn.
* LLM: the base ``Qwen2-7B-Instruct/`` weights with the checkpoint's LoRA merged in
  (``W + alpha/r * B @ A``, alpha 16 and r 64 hard-coded by FireRedASR), exported as a stock
  ``Qwen2ForCausalLM``. The LoRA is applied only when ``args.use_lora`` and not
  ``args.freeze_llm``, as in the reference.
* FireRedASR2-LLM (2026) ships the same files, but ``asr_encoder.pth.tar`` holds only the
  args and ``Qwen2-7B-Instruct/`` is a folder inside the repo; its pipeline lower-cases the
  text, and so does :meth:`postprocess` when the encoder file has no weights.
* Decoding: greedy with ``repetition_penalty`` 3.0 by default (the reference's recommended
  setting, which it pairs with beam 3; beam search has no prompt-embeddings path in vLLM),
  on generated tokens only, like transformers' ``generate(inputs_embeds=...)``; at most as
  many new tokens as audio tokens (the reference's ``decode_max_len=0``). The text is the
  decoded tokens without special tokens, stripped.

The ``.pth.tar`` pickles hold an ``argparse.Namespace``: they are loaded with
``torch.load(weights_only=True)`` allowing that one class, never with ``weights_only=False``.

Setup also writes ``config.json`` into the model folder (``model_type: fireredasr``: the
encoder's dimensions and downsample rate read from the args, the speech token and its id
looked up in the tokenizer) so the folder describes itself; a folder that already has one
is accepted, and a ``config.json`` of another kind is left alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import re
from collections.abc import Iterator, Mapping
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
from asrctl.errors import ModelDirError, OptionsError

if TYPE_CHECKING:
    import torch

LLM_DIR = "Qwen2-7B-Instruct"
MODEL_TYPE = "fireredasr"
SPEECH_TOKEN = "<speech>"
# The reference's decode template (LlmTokenizerWrapper.preprocess_texts, decode=True):
# "<|im_start|>user\n<speech>请转写音频为文字<|im_end|>\n<|im_start|>assistant\n".
PREFIX = "<|im_start|>user\n"
SUFFIX = "请转写音频为文字<|im_end|>\n<|im_start|>assistant\n"
LORA_ALPHA = 16  # FireRedAsrLlm.from_args: LoraConfig(r=64, lora_alpha=16, ...)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REPETITION_PENALTY = 3.0  # the README's and example scripts' setting
ENCODER_ARGS = ("idim", "d_model", "n_head", "n_layers_enc", "kernel_size")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_LORA_KEY = re.compile(r"^(?P<base>.+)\.lora_(?P<which>[AB])\.default\.weight$")


def load_checkpoint(path: Path, *, mmap: bool = True) -> dict[str, Any]:
    """A FireRed ``.pth.tar`` loaded safely: tensors plus ``argparse.Namespace``, nothing else.

    With ``mmap`` (and torch's zip format) tensors are mapped lazily from the file, so the
    file must not be rewritten while they are in use.

    Raises:
        pickle.UnpicklingError: The pickle needs other classes than the allowed ones.
        RuntimeError, OSError: The file is not a torch checkpoint.
    """
    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not mmap or "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    if not isinstance(obj, dict):
        raise RuntimeError(f"expected a dict, found {type(obj).__name__}")
    return obj


def merge_lora(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float
) -> torch.Tensor:
    """``W + scale * B @ A`` computed in fp32, returned in ``weight``'s dtype.

    Args:
        weight: (out, in) base weight.
        lora_a: (r, in) LoRA down projection.
        lora_b: (out, r) LoRA up projection.
        scale: ``lora_alpha / r``.
    """
    merged = weight.float() + scale * (lora_b.float() @ lora_a.float())
    return merged.to(weight.dtype)


def llm_weight_files(llm_dir: Path) -> list[Path]:
    """The LLM's safetensors files: the shards of an index, or ``model.safetensors``."""
    index = llm_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [llm_dir / name for name in shards]
    single = llm_dir / "model.safetensors"
    return [single] if single.is_file() else []


def _arg(args: Any, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


class FireRedAsrLlmAdapter(Adapter):
    family: ClassVar[Family] = Family(
        name="fireredasr-llm",
        title="FireRedASR-LLM",
        sample_rate=16000,
        max_audio_seconds=30.0,
        repetition_penalty=REPETITION_PENALTY,
        chat_text="none",
    )
    required: ClassVar[tuple[RequiredFile, ...]] = (
        RequiredFile(
            "model.pth.tar", "FireRedASR-LLM checkpoint: encoder, projector and LoRA weights"
        ),
        RequiredFile("asr_encoder.pth.tar", "FireRedASR AED checkpoint the encoder is built from"),
        RequiredFile("cmvn.ark", "Kaldi CMVN statistics"),
        RequiredFile(
            LLM_DIR,
            "the Qwen2-7B-Instruct folder (FireRedASR2-LLM ships it; for FireRedASR-LLM-L "
            "link it: ln -s ../Qwen2-7B-Instruct)",
            is_dir=True,
        ),
        RequiredFile(f"{LLM_DIR}/config.json", "Qwen2 LLM config"),
        RequiredFile(f"{LLM_DIR}/tokenizer.json", "Qwen2 tokenizer"),
    )

    @classmethod
    def matches(cls, model_dir: Path) -> bool:
        conf = model_dir / "config.json"
        if conf.is_file() and conf.stat().st_size < (1 << 20):
            try:
                data = json.loads(conf.read_text())
            except (ValueError, UnicodeDecodeError):
                data = None
            if isinstance(data, dict) and data.get("model_type") == MODEL_TYPE:
                return True
        # model.pth.tar plus any other FireRed-LLM file, so that a directory missing some of
        # them is still recognised and its missing files named (a FireRed AED directory has
        # neither asr_encoder.pth.tar nor the Qwen2 folder).
        return (model_dir / "model.pth.tar").exists() and any(
            os.path.lexists(model_dir / name) for name in ("asr_encoder.pth.tar", LLM_DIR)
        )

    # -- loading -----------------------------------------------------------------------

    @functools.cached_property
    def package(self) -> dict[str, Any]:
        """``model.pth.tar`` (memory-mapped)."""
        return load_checkpoint(self.model_dir / "model.pth.tar")

    @functools.cached_property
    def encoder_package(self) -> dict[str, Any]:
        """``asr_encoder.pth.tar`` (memory-mapped)."""
        return load_checkpoint(self.model_dir / "asr_encoder.pth.tar")

    @property
    def args(self) -> Any:
        return self.package.get("args")

    @property
    def lora_applied(self) -> bool:
        """The reference wraps the LLM with LoRA only when it is trainable and use_lora."""
        return bool(_arg(self.args, "use_lora", False)) and not _arg(self.args, "freeze_llm", True)

    @property
    def downsample_rate(self) -> int:
        return int(_arg(self.args, "encoder_downsample_rate", 2))

    @property
    def llm_dir(self) -> Path:
        return self.model_dir / LLM_DIR

    @functools.cached_property
    def llm_config(self) -> dict:
        return json.loads((self.llm_dir / "config.json").read_text())

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """``encoder.*`` of asr_encoder.pth.tar, overridden by model.pth.tar's, + projector."""
        state = {
            k: v
            for k, v in (self.encoder_package.get("model_state_dict") or {}).items()
            if k.startswith("encoder.")
        }
        for k, v in (self.package.get("model_state_dict") or {}).items():
            if k.startswith(("encoder.", "encoder_projector.")):
                state[k] = v
        return state

    def llm_overrides(self) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """``llm.*`` tensors of model.pth.tar under stock names: (full tensors, LoRA A/B pairs).

        PEFT's ``base_model.model.`` prefix and ``.base_layer`` are removed, so a LoRA pair
        is keyed by the stock weight it adapts (``model.layers.0.self_attn.q_proj.weight``).
        Without LoRA (``lora_applied`` False) the reference ignores LoRA keys, and so do we.
        """
        full: dict[str, torch.Tensor] = {}
        lora: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in (self.package.get("model_state_dict") or {}).items():
            if not key.startswith("llm."):
                continue
            name = key[len("llm.") :]
            if self.lora_applied:
                name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            match = _LORA_KEY.match(name)
            if match:
                if self.lora_applied:
                    lora.setdefault(match["base"] + ".weight", {})[match["which"]] = tensor
            else:
                full[name] = tensor
        return full, lora

    @property
    def version(self) -> int:
        """2 for FireRedASR2-LLM, whose asr_encoder.pth.tar holds only the args, else 1."""
        return 1 if self.encoder_package.get("model_state_dict") else 2

    @property
    def layout(self) -> str:
        """The release recognised (for ``asrctl verify``)."""
        kind = (
            "FireRedASR-LLM v1 layout (asr_encoder.pth.tar holds the AED weights)"
            if self.version == 1
            else "FireRedASR2-LLM layout (asr_encoder.pth.tar holds only args; the encoder "
            "comes from model.pth.tar)"
        )
        where = "a symlink" if self.llm_dir.is_symlink() else "a folder inside the repo"
        return f"{kind}; {LLM_DIR}/ is {where}"

    def tensor_groups(self) -> dict[str, int]:
        """Tensor count per module of model.pth.tar, plus the LLM's own (``asrctl verify``)."""
        from safetensors import safe_open

        groups: dict[str, int] = {}
        for key in self.package.get("model_state_dict") or {}:
            group = "llm (LoRA)" if ".lora_" in key else key.split(".")[0]
            groups[f"model.pth.tar: {group}"] = groups.get(f"model.pth.tar: {group}", 0) + 1
        for key in self.encoder_package.get("model_state_dict") or {}:
            group = f"asr_encoder.pth.tar: {key.split('.')[0]}"
            groups[group] = groups.get(group, 0) + 1
        for path in llm_weight_files(self.llm_dir):
            with safe_open(str(path), framework="pt") as f:
                groups[f"{LLM_DIR}"] = groups.get(LLM_DIR, 0) + len(list(f.keys()))
        return groups

    # -- the contract --------------------------------------------------------------------

    def check_contents(self) -> list[str]:
        problems: list[str] = []
        for name, attr in (
            ("model.pth.tar", "package"),
            ("asr_encoder.pth.tar", "encoder_package"),
        ):
            try:
                getattr(self, attr)
            except pickle.UnpicklingError as e:
                found = _UNSAFE_GLOBAL.search(str(e))
                what = found[1] if found else "an object that is not a tensor"
                problems.append(
                    f"{name}: not a loadable FireRedASR checkpoint (it pickles {what}; "
                    "asrctl unpickles only tensors and argparse.Namespace)"
                )
            except (RuntimeError, OSError, EOFError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                problems.append(f"{name}: not a loadable FireRedASR checkpoint ({first})")
        if problems:
            return problems
        enc_args = self.encoder_package.get("args")
        missing = [a for a in ENCODER_ARGS if _arg(enc_args, a) is None]
        if missing:
            problems.append(f"asr_encoder.pth.tar: args lack {', '.join(missing)}")
        if self.args is None:
            problems.append("model.pth.tar: no args (the pickled FireRedAsrLlm settings)")
        state = self.encoder_state()
        for key in ("encoder.input_preprocessor.out.weight", "encoder_projector.linear2.weight"):
            if key not in state:
                problems.append(f"model.pth.tar: no {key.split('.')[0]}.* weights ({key})")
        problems += self._check_cmvn(_arg(enc_args, "idim"))
        problems += self._check_llm(state)
        return problems

    def _check_cmvn(self, idim: int | None) -> list[str]:
        from asrctl.models.features import load_kaldi_cmvn

        try:
            cmvn = load_kaldi_cmvn(self.model_dir / "cmvn.ark")
        except Exception as e:  # kaldiio raises many types on a bad file
            return [f"cmvn.ark: not Kaldi CMVN statistics ({e})"]
        if idim is not None and cmvn.mean.numel() != int(idim):
            return [f"cmvn.ark: {cmvn.mean.numel()} dims, the encoder expects {idim}"]
        return []

    def _check_llm(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        try:
            config = self.llm_config
        except ValueError as e:
            return [f"{LLM_DIR}/config.json: not valid JSON ({e})"]
        problems = []
        if config.get("model_type") != "qwen2":
            problems.append(
                f"{LLM_DIR}/config.json: model_type should be qwen2, not "
                f"{config.get('model_type')!r}"
            )
        proj = state.get("encoder_projector.linear2.weight")
        if proj is not None and proj.shape[0] != config.get("hidden_size"):
            problems.append(
                f"{LLM_DIR}/config.json: hidden_size {config.get('hidden_size')} does not match "
                f"the projector's output {proj.shape[0]}"
            )
        if not llm_weight_files(self.llm_dir):
            problems.append(
                f"missing LLM weights: {LLM_DIR}/model.safetensors or "
                f"model.safetensors.index.json with its shards — Qwen2-7B-Instruct weights"
            )
        if self.lora_applied and not self.llm_overrides()[1]:
            problems.append("model.pth.tar: args say use_lora, but it holds no LoRA tensors")
        return problems

    def llm_export(self) -> LlmExport:
        config = dict(self.llm_config)
        config["architectures"] = ["Qwen2ForCausalLM"]
        from asrctl.export import TOKENIZER_FILES

        sources = [self.model_dir / "model.pth.tar", self.llm_dir / "config.json"]
        index = self.llm_dir / "model.safetensors.index.json"
        sources += [index] if index.is_file() else []
        sources += llm_weight_files(self.llm_dir)
        sources += [self.llm_dir / n for n in TOKENIZER_FILES if (self.llm_dir / n).is_file()]
        return LlmExport(
            config=config,
            tokenizer_dir=self.llm_dir,
            sources=tuple(sources),
            config_source=f"{LLM_DIR}/config.json",
        )

    def llm_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Base weights with model.pth.tar's LLM tensors applied: overrides, then LoRA merged."""
        from safetensors import safe_open

        full, lora = self.llm_overrides()
        for path in llm_weight_files(self.llm_dir):
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    override = full.pop(name, None)
                    if override is not None:  # loaded over the base, as strict=False does
                        tensor = override.to(tensor.dtype)
                    pair = lora.pop(name, None)
                    if pair is not None:
                        scale = LORA_ALPHA / pair["A"].shape[0]
                        tensor = merge_lora(tensor, pair["A"], pair["B"], scale)
                    yield name, tensor
        leftover = sorted(full) + sorted(lora)
        if leftover:
            names = ", ".join(leftover[:3])
            raise ModelDirError(
                str(self.model_dir), [f"model.pth.tar: LLM tensors not in {LLM_DIR}: {names}"]
            )

    def audio_encoder(self, device: str, dtype: torch.dtype) -> AudioEncoder:
        from asrctl.models.conformer import ConformerConfig, FireRedAudio
        from asrctl.models.features import load_kaldi_cmvn

        config = ConformerConfig.from_args(self.encoder_package["args"])
        return FireRedAudio.from_checkpoint(
            config,
            self.encoder_state(),
            load_kaldi_cmvn(self.model_dir / "cmvn.ark"),
            downsample_rate=self.downsample_rate,
            device=device,
            dtype=dtype,
        )

    def audio_positions(self, num_samples: int) -> int:
        from asrctl.models.conformer import audio_positions

        return audio_positions(num_samples, self.downsample_rate)

    def prompt(self, options: PromptOptions) -> Prompt:
        if options.hotwords:
            raise OptionsError(
                "FireRedASR-LLM has no hotword prompt", hint="drop --hotwords for this model"
            )
        if options.language not in (None, "auto"):
            raise OptionsError(
                f"FireRedASR-LLM does not take a language (got {options.language!r}): "
                "it recognises Mandarin, Chinese dialects and English by itself",
                hint="drop --language or pass auto",
            )
        return Prompt(prefix=PREFIX, suffix=SUFFIX)

    def postprocess(self, text: str) -> str:
        """Stripped; lower-cased for FireRedASR2-LLM, as its ``FireRedAsr2.transcribe`` does."""
        text = text.strip()
        return text.lower() if self.version == 2 else text

    def max_new_tokens(self, n_audio_tokens: int) -> int | None:
        """The reference decodes at most as many tokens as there are audio tokens."""
        return max(1, n_audio_tokens)

    def setup_files(self) -> dict[str, str]:
        """``config.json`` describing the folder, unless one of another kind is there."""
        path = self.model_dir / "config.json"
        if path.exists():
            try:
                if json.loads(path.read_text()).get("model_type") != MODEL_TYPE:
                    return {}
            except (ValueError, AttributeError, OSError, UnicodeDecodeError):
                return {}
        return {
            "config.json": json.dumps(self.folder_config(), indent=2, ensure_ascii=False) + "\n"
        }

    def folder_config(self) -> dict[str, Any]:
        """What ``config.json`` says: read from the args, the tokenizer and the LLM config."""
        from tokenizers import Tokenizer

        enc_args = self.encoder_package["args"]
        tokenizer = Tokenizer.from_file(str(self.llm_dir / "tokenizer.json"))
        # The reference adds <speech> as a new special token: it gets the next free id.
        speech_id = tokenizer.token_to_id(SPEECH_TOKEN)
        if speech_id is None:
            speech_id = tokenizer.get_vocab_size(with_added_tokens=True)
        lora = self.llm_overrides()[1]
        rank = next(iter(lora.values()))["A"].shape[0] if lora else None
        return {
            "model_type": MODEL_TYPE,
            "architectures": ["FireRedAsrLlm"],
            "asrctl_family": self.family.name,
            "llm_dir": LLM_DIR,
            "llm_architectures": ["Qwen2ForCausalLM"],
            "llm_hidden_size": self.llm_config.get("hidden_size"),
            "encoder": {
                "type": "conformer",
                "idim": int(enc_args.idim),
                "d_model": int(enc_args.d_model),
                "n_head": int(enc_args.n_head),
                "n_layers": int(enc_args.n_layers_enc),
                "kernel_size": int(enc_args.kernel_size),
                "subsampling": 4,
            },
            "encoder_downsample_rate": self.downsample_rate,
            "speech_token": SPEECH_TOKEN,
            "speech_token_id": speech_id,
            "lora": {
                "applied": self.lora_applied,
                "r": rank,
                "alpha": LORA_ALPHA,
                "target_modules": list(LORA_TARGETS),
            },
            "repetition_penalty": REPETITION_PENALTY,
            "max_audio_seconds": self.family.max_audio_seconds,
        }
