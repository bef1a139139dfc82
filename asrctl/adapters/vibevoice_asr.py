"""VibeVoice-ASR (Microsoft): σ-VAE acoustic + semantic tokenizer encoders, summed connectors,
Qwen2.5 LLM; speaker-attributed, timestamped JSON output.

Two layouts are read: the original ``microsoft/VibeVoice-ASR`` (``model_type vibevoice``,
``VibeVoiceForASRTraining``, ``model.acoustic_tokenizer.encoder.*`` …) and transformers'
``microsoft/VibeVoice-ASR-HF`` (``model_type vibevoice_asr``). Audio is 24 kHz mono,
normalised to −25 dBFS, zero-padded to a multiple of the 3200-sample hop; both encoders
run deterministically (VAE means), in 60 s pieces with a causal conv cache, so one pass
takes up to 60 minutes (≈27 000 audio positions: size ``--max-model-len`` for it, e.g.
65536 as the original vLLM plugin does).

The prompt is the original processor's: a system turn asking for JSON, then the audio
between ``<|object_ref_start|>``/``<|object_ref_end|>`` and the duration ("This is a 12.34
seconds audio…", with ``extra info`` when hotwords are given). The model answers
``[{"Start":0.0,"End":3.2,"Speaker":0,"Content":"…"}, …]``; :func:`parse_transcription`
turns that into text plus segments, tolerating code fences and a truncated tail, and
falls back to the raw text (with a warning) when it is not such a list.

The original release ships no tokenizer. ``python -m asrctl.adapters.vibevoice_asr
add-tokenizer MODEL_DIR QWEN_TOKENIZER_DIR`` writes the six files the VibeVoice vLLM
plugin generates, from a Qwen2.5 tokenizer folder.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

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
from asrctl.errors import AsrctlError, OptionsError
from asrctl.results import Segment

if TYPE_CHECKING:
    import torch

    from asrctl.models.vibevoice import EncoderDims

log = logging.getLogger("asrctl")

SYSTEM_PROMPT = (
    "You are a helpful assistant that transcribes audio input into text output in JSON format."
)
PREFIX = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|object_ref_start|>"
KEYS = "Start time, End time, Speaker ID, Content"
INSTRUCTION = "This is a {seconds:.2f} seconds audio, please transcribe it with these keys: " + KEYS
INSTRUCTION_WITH_CONTEXT = (
    "This is a {seconds:.2f} seconds audio, with extra info: {context}\n\n"
    "Please transcribe it with these keys: " + KEYS
)
SUFFIX = "<|object_ref_end|>\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
# Tokens the prompt needs from the tokenizer (the audio slots are embeddings, not ids).
PROMPT_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
)
AUDIO_TOKENS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")  # added by the plugin's script
QWEN_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
GENERATED_FILES = (*QWEN_FILES, "added_tokens.json", "special_tokens_map.json")
HOP = 3200
HF_KEYS = KeyLayout(
    audio=("acoustic_tokenizer_encoder", "semantic_tokenizer_encoder", "multi_modal_projector")
)
ORIGINAL_AUDIO = (
    "model.acoustic_tokenizer",
    "model.semantic_tokenizer",
    "model.acoustic_connector",
    "model.semantic_connector",
)
MAX_SECONDS = 3600.0
_START = ("Start", "Start time", "start_time", "start")
_END = ("End", "End time", "end_time", "end")
_SPEAKER = ("Speaker", "Speaker ID", "speaker_id", "speaker")
_CONTENT = ("Content", "text", "content")


# --- output parsing ------------------------------------------------------------------------


def _strip_wrapping(text: str) -> str:
    t = text.strip()
    if t.startswith("assistant"):
        t = t[len("assistant") :].lstrip()
    if t.startswith("```"):
        t = t[3:]
        newline = t.find("\n")
        if newline != -1 and t[:newline].strip().isalpha():  # ```json
            t = t[newline + 1 :]
        elif t.lower().startswith("json"):
            t = t[4:]
        t = t.strip()
        if t.endswith("```"):
            t = t[:-3].rstrip()
    return t


def _complete_items(body: str) -> tuple[list, bool]:
    """The complete JSON values of a (possibly truncated) array body; True if it was whole."""
    decoder = json.JSONDecoder()
    items: list = []
    pos = 1  # after "["
    while True:
        while pos < len(body) and body[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(body):
            return items, False
        if body[pos] == "]":
            return items, not body[pos + 1 :].strip()
        try:
            value, pos = decoder.raw_decode(body, pos)
        except ValueError:
            return items, False
        items.append(value)


def _pick(seg: dict, names: tuple[str, ...]):
    for n in names:
        if n in seg:
            return seg[n]
    return None


def _seconds(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return round(float(value), 3)
    except (TypeError, ValueError):
        return None


def _segment(seg) -> dict | None:
    if not isinstance(seg, dict):
        return None
    content = _pick(seg, _CONTENT)
    if not isinstance(content, str):
        return None
    speaker = _pick(seg, _SPEAKER)
    if isinstance(speaker, str) and speaker.strip().lstrip("-").isdigit():
        speaker = int(speaker)
    elif isinstance(speaker, float) and speaker.is_integer():
        speaker = int(speaker)
    elif not isinstance(speaker, int | str) or isinstance(speaker, bool):
        speaker = None
    return {
        "start": _seconds(_pick(seg, _START)),
        "end": _seconds(_pick(seg, _END)),
        "speaker": speaker,
        "text": content.strip(),
    }


def parse_transcription(raw: str) -> tuple[str, list[dict], str | None]:
    """``(text, segments, problem)`` from the model's output.

    Segments are ``{"start", "end", "speaker", "text"}`` (seconds; the shape of
    ``Transcript.segments``, plus the speaker id; a missing time is filled from the one
    before). A truncated list keeps its complete
    segments (problem says so); anything that is not a list of segments with ``Content``
    gives the stripped raw text, no segments and the reason.
    """
    body = _strip_wrapping(raw)
    plain = raw.strip()
    if not body.startswith("["):
        return plain, [], "output is not a JSON list"
    try:
        items, whole = json.loads(body), True
        if not isinstance(items, list):
            return plain, [], "output is not a JSON list"
    except ValueError:
        items, whole = _complete_items(body)
        if not items:
            return plain, [], "output is not valid JSON"
    maybe = [_segment(s) for s in items]
    segments = [s for s in maybe if s is not None]
    if len(segments) < len(maybe):
        return plain, [], "a segment is not an object with Content"
    previous_end = 0.0
    for seg in segments:  # always numbers, so subtitle writers can use them
        if seg["start"] is None:
            seg["start"] = previous_end
        if seg["end"] is None:
            seg["end"] = seg["start"]
        previous_end = seg["end"]
    text = " ".join(s["text"] for s in segments if s["text"])
    problem = None if whole else f"output was cut off; kept {len(segments)} complete segments"
    return text, segments, problem


# --- tokenizer files ---------------------------------------------------------------------------


def add_tokenizer(model_dir: Path, qwen_dir: Path) -> list[Path]:
    """Write the six tokenizer files into ``model_dir`` from a Qwen2.5 tokenizer folder.

    Like the VibeVoice plugin's ``generate_tokenizer_files.py``: the Qwen2.5 vocabulary
    with ``<|AUDIO|>``, ``<|audio_bos|>``, ``<|audio_eos|>`` appended as special tokens.
    """
    from tokenizers import AddedToken, Tokenizer

    missing = [n for n in QWEN_FILES if not (qwen_dir / n).is_file()]
    if missing:
        raise AsrctlError(
            f"{qwen_dir} is not a Qwen2.5 tokenizer folder (missing {', '.join(missing)})",
            hint=TOKENIZER_HINT,
        )
    tok = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    absent = [t for t in PROMPT_TOKENS if tok.token_to_id(t) is None]
    if absent:
        raise AsrctlError(
            f"{qwen_dir}/tokenizer.json lacks {', '.join(absent)}: not a Qwen2/Qwen2.5 tokenizer",
            hint=TOKENIZER_HINT,
        )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in AUDIO_TOKENS])
    model_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(model_dir / "tokenizer.json"))
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(qwen_dir / name, model_dir / name)
    config = json.loads((qwen_dir / "tokenizer_config.json").read_text())
    decoder = config.setdefault("added_tokens_decoder", {})
    for t in AUDIO_TOKENS:
        decoder[str(tok.token_to_id(t))] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    extra = list(config.get("additional_special_tokens") or [])
    config["additional_special_tokens"] = extra + [t for t in AUDIO_TOKENS if t not in extra]
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False)
    )
    added = {v["content"]: int(k) for k, v in sorted(decoder.items(), key=lambda kv: int(kv[0]))}
    (model_dir / "added_tokens.json").write_text(json.dumps(added, indent=2, ensure_ascii=False))
    special = {
        "additional_special_tokens": config["additional_special_tokens"],
        "eos_token": config.get("eos_token") or "<|endoftext|>",
        "pad_token": config.get("pad_token") or "<|endoftext|>",
    }
    (model_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return [model_dir / n for n in GENERATED_FILES]


TOKENIZER_HINT = (
    "microsoft/VibeVoice-ASR ships no tokenizer: download Qwen/Qwen2.5-7B's tokenizer.json, "
    "tokenizer_config.json, vocab.json and merges.txt into a folder (e.g. `hf download "
    "Qwen/Qwen2.5-7B tokenizer.json tokenizer_config.json vocab.json merges.txt --local-dir "
    "qwen2.5-tokenizer`), then run `python -m asrctl.adapters.vibevoice_asr add-tokenizer "
    "MODEL_DIR qwen2.5-tokenizer`"
)


# --- the adapter ---------------------------------------------------------------------------------


class VibeVoiceAsrAdapter(Adapter):
    family: ClassVar[Family] = Family(
        name="vibevoice-asr",
        title="VibeVoice-ASR",
        sample_rate=24000,
        max_audio_seconds=MAX_SECONDS,
        writes_segments=True,
        # The σ-VAE encoders run at 24 kHz with 4x-wide feed-forwards in their first
        # stages: ~35-60 MiB of float32 activations per second of audio (measured on a
        # CPU). At the default 960 s a pass ran out of memory beside vLLM on an H100
        # (BENCHMARKS.md, round 13); 120 s is a few GiB.
        max_encoder_batch_seconds=120.0,
    )
    required: ClassVar[tuple[RequiredFile, ...]] = (
        RequiredFile("config.json", "VibeVoice config (model_type vibevoice or vibevoice_asr)"),
    )

    @classmethod
    def matches(cls, model_dir: Path) -> bool:
        conf = model_dir / "config.json"
        if not conf.is_file() or conf.stat().st_size > (1 << 20):
            return False
        try:
            data = json.loads(conf.read_text())
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(data, dict) and data.get("model_type") in ("vibevoice", "vibevoice_asr")

    @functools.cached_property
    def config(self) -> dict:
        return json.loads((self.model_dir / "config.json").read_text())

    @property
    def hf_layout(self) -> bool:
        return self.config.get("model_type") == "vibevoice_asr"

    @property
    def text_config(self) -> dict:
        return dict(self.config.get("text_config" if self.hf_layout else "decoder_config") or {})

    def weight_files(self) -> list[Path]:
        return weight_files(self.model_dir)

    @functools.cached_property
    def checkpoint(self) -> Checkpoint:
        """The -HF weights under release names, whichever layout transformers wrote."""
        return Checkpoint.open(self.model_dir, HF_KEYS)

    @property
    def layout(self) -> str:
        """The on-disk layout recognised (for ``asrctl verify``)."""
        if not self.hf_layout:
            return "original microsoft/VibeVoice-ASR (model.*, lm_head.weight)"
        return f"transformers vibevoice_asr, {self.checkpoint.layout}"

    def check_contents(self) -> list[str]:
        problems = []
        archs = self.config.get("architectures") or []
        if not self.hf_layout and "VibeVoiceForASRTraining" not in archs:
            problems.append(
                f"config.json: architectures {archs} is not VibeVoiceForASRTraining "
                "(a VibeVoice TTS or streaming checkpoint is not supported)"
            )
        blocks = (
            (
                "acoustic_tokenizer_encoder_config",
                "semantic_tokenizer_encoder_config",
                "text_config",
            )
            if self.hf_layout
            else ("acoustic_tokenizer_config", "semantic_tokenizer_config", "decoder_config")
        )
        problems += [f"config.json: missing the {b} block" for b in blocks if b not in self.config]
        try:
            files = self.weight_files()
        except (ValueError, KeyError) as e:
            return [*problems, f"model.safetensors.index.json: unreadable ({e})"]
        problems += [
            f"missing weights file {f.name} (model.safetensors or the shards of "
            "model.safetensors.index.json)"
            for f in files
            if not f.is_file()
        ]
        if not problems:
            problems += self._check_weights()
        if not (self.model_dir / "tokenizer.json").is_file():
            problems.append(f"missing tokenizer.json. {TOKENIZER_HINT}")
        else:
            problems += self._check_tokenizer()
        return problems

    def _check_weights(self) -> list[str]:
        """Headers readable; every audio module present (the LLM is checked at export)."""
        if self.hf_layout:
            try:
                groups = self.checkpoint.groups()
            except ValueError as e:
                return [str(e)]
            wanted = HF_KEYS.audio
        else:
            from safetensors import safe_open

            groups = {}
            for path in self.weight_files():
                try:
                    with safe_open(str(path), framework="pt") as f:
                        for key in f.keys():
                            group = ".".join(key.split(".")[:2])
                            groups[group] = groups.get(group, 0) + 1
                except Exception as e:  # safetensors raises its own error types
                    return [f"{path.name}: not a readable safetensors file ({e})"]
            wanted = ORIGINAL_AUDIO
        missing = [g for g in wanted if g not in groups]
        return [f"weights: no {g}.* tensors" for g in missing]

    def tensor_groups(self) -> dict[str, int]:
        """Tensor count per module (for ``asrctl verify``), under release names for -HF."""
        if self.hf_layout:
            return self.checkpoint.groups()
        from safetensors import safe_open

        groups: dict[str, int] = {}
        for path in self.weight_files():
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    depth = 3 if key.startswith("model.language_model.") else 2
                    group = ".".join(key.split(".")[:depth])
                    groups[group] = groups.get(group, 0) + 1
        return groups

    def _check_tokenizer(self) -> list[str]:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        except Exception as e:
            return [f"tokenizer.json: unreadable ({e})"]
        absent = [t for t in PROMPT_TOKENS if tok.token_to_id(t) is None]
        return (
            [f"tokenizer.json: lacks {', '.join(absent)} (not a Qwen2.5 tokenizer)"]
            if absent
            else []
        )

    @functools.cached_property
    def _special_ids(self) -> dict[str, int | None]:  # None: not in the tokenizer
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        return {t: tok.token_to_id(t) for t in PROMPT_TOKENS}

    def llm_export(self) -> LlmExport:
        from asrctl.export import TOKENIZER_FILES

        config = self.text_config
        config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
        ids = self._special_ids
        # the answer ends with <|im_end|>; the -HF generation config names <|endoftext|>
        config["eos_token_id"] = [ids["<|im_end|>"], ids["<|endoftext|>"]]
        # the checkpoint's dtype: the top-level one (what from_pretrained(dtype="auto") uses)
        set_dtype(config, config_dtype(self.config, self.text_config) or "bfloat16")
        if self.hf_layout:
            config["tie_word_embeddings"] = self.tied
        sources = [self.model_dir / "config.json", *self.weight_files()]
        index = self.model_dir / "model.safetensors.index.json"
        if index.is_file():
            sources.append(index)
        sources += [self.model_dir / n for n in TOKENIZER_FILES if (self.model_dir / n).is_file()]
        block = "text_config" if self.hf_layout else "decoder_config"
        return LlmExport(
            config=config,
            tokenizer_dir=self.model_dir,
            sources=tuple(sources),
            config_source=f"config.json ({block})",
        )

    def _tensors(self, want) -> Iterator[tuple[str, torch.Tensor]]:
        from safetensors import safe_open

        for path in self.weight_files():
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if want(name):
                        yield name, f.get_tensor(name)

    @property
    def tied(self) -> bool:
        return bool(
            self.config.get(
                "tie_word_embeddings", self.text_config.get("tie_word_embeddings", False)
            )
        )

    def llm_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self.hf_layout:
            yield from self.checkpoint.llm_tensors(tied=self.tied)
            return
        prefix = "model.language_model."
        for name, t in self._tensors(lambda n: n.startswith(prefix) or n == "lm_head.weight"):
            yield ("model." + name[len(prefix) :] if name.startswith(prefix) else name), t

    def encoder_dims(self) -> tuple[EncoderDims, EncoderDims]:
        """The acoustic and semantic encoders' shapes, from either layout's config."""
        from asrctl.models.vibevoice import EncoderDims

        if self.hf_layout:
            return (
                EncoderDims.from_hf(self.config["acoustic_tokenizer_encoder_config"]),
                EncoderDims.from_hf(self.config["semantic_tokenizer_encoder_config"]),
            )
        return (
            EncoderDims.from_original(self.config["acoustic_tokenizer_config"]),
            EncoderDims.from_original(self.config["semantic_tokenizer_config"]),
        )

    def audio_positions(self, num_samples: int) -> int:
        from asrctl.models.vibevoice import n_audio_tokens

        return n_audio_tokens(num_samples, self.encoder_dims()[0].hop)

    def audio_encoder(self, device: str, dtype: torch.dtype) -> AudioEncoder:
        from asrctl.models.vibevoice import VibeVoiceAudio, hf_to_original

        hidden = int(self.text_config["hidden_size"])
        acoustic, semantic = self.encoder_dims()
        state = {}
        if self.hf_layout:
            for name, t in self.checkpoint.tensors(lambda n: not n.startswith("language_model.")):
                mapped = hf_to_original(name)
                if mapped is not None:
                    state[mapped] = t
        else:
            audio = ("model.acoustic_", "model.semantic_")
            for name, t in self._tensors(lambda n: n.startswith(audio) and ".decoder." not in n):
                state[name.removeprefix("model.")] = t
        return VibeVoiceAudio.from_state(
            acoustic, semantic, hidden, state, device=device, dtype=dtype
        )

    def prompt(self, options: PromptOptions) -> Prompt:
        return self.prompt_for_audio(options, None)

    def prompt_for_audio(self, options: PromptOptions, seconds: float | None) -> Prompt:
        if options.language not in (None, "auto") and options.language.lower() != "auto":
            raise OptionsError(
                "VibeVoice-ASR takes no language setting (it detects the language itself)",
                hint="leave --language unset or auto; pass context words with --hotwords",
            )
        if not options.itn:
            raise OptionsError("VibeVoice-ASR has no switch for inverse text normalisation")
        seconds = 0.0 if seconds is None else seconds
        if options.hotwords:
            instruction = INSTRUCTION_WITH_CONTEXT.format(
                seconds=seconds, context=", ".join(options.hotwords)
            )
        else:
            instruction = INSTRUCTION.format(seconds=seconds)
        return Prompt(
            prefix=PREFIX.format(system=SYSTEM_PROMPT),
            suffix=SUFFIX.format(instruction=instruction),
        )

    def parse_output(self, text: str) -> tuple[str, list[Segment]]:
        clean, segments, problem = parse_transcription(text)
        if problem:
            log.warning("VibeVoice-ASR: %s%s", problem, "" if segments else "; kept as plain text")
        return clean, [
            Segment(start=s["start"], end=s["end"], text=s["text"], speaker=s["speaker"])
            for s in segments
        ]

    def postprocess(self, text: str) -> str:
        return parse_transcription(text)[0]

    def max_new_tokens(self, n_audio_tokens: int) -> int | None:
        # JSON segments: ~4 text tokens/s of speech plus ~20 per segment; 7.5 audio tokens/s
        return min(32768, 256 + 2 * n_audio_tokens)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m asrctl.adapters.vibevoice_asr",
        description="Write the tokenizer files microsoft/VibeVoice-ASR does not ship.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add-tokenizer", help="build them from a Qwen2.5 tokenizer folder")
    add.add_argument("model_dir", type=Path)
    add.add_argument("qwen_tokenizer_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        for path in add_tokenizer(args.model_dir, args.qwen_tokenizer_dir):
            print(path)
    except AsrctlError as e:
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
