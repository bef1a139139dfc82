"""The CTC tokenizer of Fun-ASR-Nano: SenseVoice's tiktoken vocabulary (``multilingual.tiktoken``).

Built like funasr's ``SenseVoiceTokenizer`` (``sense_voice/whisper_lib/tokenizer.py``), written
from its structure: the ranks file holds one ``base64(token) rank`` pair per line; the special
tokens are appended after the ranks in a fixed order (end of text, start of transcript, the
language tags, audio events, emotions, task tokens, 50 reserved tokens, 1501 timestamps); the
split pattern is GPT-2's. The published vocabulary has 58,836 ranks, so its ids run to
58,836 + 1,679 - 1 = 60,514: ``ctc_vocab_size`` 60515, whose last id is the CTC blank.

Like funasr, :meth:`CtcTokenizer.encode` treats special-token strings as ordinary text
(``disallowed_special=()``): an LLM transcript containing ``<|zh|>`` is aligned as characters,
and the targets of an alignment are always ordinary tokens.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

__all__ = ["CTC_VOCAB_FILE", "CtcTokenizer", "ctc_vocab_path", "special_tokens"]

CTC_VOCAB_FILE = "multilingual.tiktoken"  # beside model.pt in the ModelScope release
DEFAULT_NUM_LANGUAGES = 8749  # SenseVoiceTokenizer's default: keeps every language tag

# GPT-2's pre-tokenizer split pattern, as Whisper and SenseVoice use it.
PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Language tags in id order: Whisper's 100 languages, then SenseVoice's five additions.
LANGUAGE_CODES = tuple(
    """
    en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no
    th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw
    gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl
    mg as tt haw ln ha ba jw su yue minnan wuyu dialect zh/en en/zh
    """.split()
)
AUDIO_EVENTS = (
    "ASR",
    "AED",
    "SER",
    "Speech",
    "/Speech",
    "BGM",
    "/BGM",
    "Laughter",
    "/Laughter",
    "Applause",
    "/Applause",
)
EMOTIONS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL")
TASK_TOKENS = ("translate", "transcribe", "startoflm", "startofprev", "nospeech", "notimestamps")
RESERVED_TOKENS = 50  # <|SPECIAL_TOKEN_1|> .. <|SPECIAL_TOKEN_50|>
TIMESTAMP_TOKENS = 1501  # <|0.00|> .. <|30.00|>, every 20 ms


def special_tokens(num_languages: int = DEFAULT_NUM_LANGUAGES) -> list[str]:
    """SenseVoice's special tokens in id order (the first gets id = number of ranks)."""
    names = [
        "endoftext",
        "startoftranscript",
        *LANGUAGE_CODES[:num_languages],
        *AUDIO_EVENTS,
        *EMOTIONS,
        *TASK_TOKENS,
        *(f"SPECIAL_TOKEN_{i}" for i in range(1, RESERVED_TOKENS + 1)),
        *(f"{i * 0.02:.2f}" for i in range(TIMESTAMP_TOKENS)),
    ]
    return [f"<|{name}|>" for name in names]


def read_ranks(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a tiktoken ranks file (``base64 rank`` per line)."""
    ranks = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def ctc_vocab_path(model_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> Path | None:
    """Where the CTC vocabulary of a Fun-ASR-Nano directory is, or None if it has none.

    Follows funasr's vLLM loader: an absolute ``ctc_tokenizer_conf.vocab_path`` wins, then
    ``<model_dir>/multilingual.tiktoken``, then a relative ``vocab_path`` under ``model_dir``.
    """
    conf = _tokenizer_conf(config)
    given = conf.get("vocab_path")
    candidates = [Path(given)] if given and os.path.isabs(given) else []
    candidates.append(Path(model_dir) / CTC_VOCAB_FILE)
    if given and not os.path.isabs(given):
        candidates.append(Path(model_dir) / given)
    return next((path for path in candidates if path.is_file()), None)


def _tokenizer_conf(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """``ctc_tokenizer_conf`` at the top level (funasr reads it first) or in ``dataset_conf``."""
    if "ctc_tokenizer_conf" in config:
        return config["ctc_tokenizer_conf"] or {}
    return config.get("dataset_conf", {}).get("ctc_tokenizer_conf") or {}


@dataclass(frozen=True, eq=False)
class CtcTokenizer:
    """Byte-level BPE tokenizer of the CTC head; ids index ``ctc.ctc_lo``'s outputs.

    Attributes:
        encoding: The tiktoken encoding (ranks plus SenseVoice's special tokens).
    """

    encoding: tiktoken.Encoding

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, num_languages: int = DEFAULT_NUM_LANGUAGES
    ) -> CtcTokenizer:
        """Load a ``multilingual.tiktoken`` ranks file.

        Args:
            path: The ranks file.
            num_languages: Language tags kept (``ctc_tokenizer_conf.num_languages``).
        """
        ranks = read_ranks(path)
        specials = {token: len(ranks) + i for i, token in enumerate(special_tokens(num_languages))}
        encoding = tiktoken.Encoding(
            name=Path(path).name,
            pat_str=PAT_STR,
            mergeable_ranks=ranks,
            special_tokens=specials,
            explicit_n_vocab=len(ranks) + len(specials),
        )
        return cls(encoding)

    @classmethod
    def from_model_dir(
        cls, model_dir: str | os.PathLike[str], config: Mapping[str, Any]
    ) -> CtcTokenizer | None:
        """The CTC tokenizer a Fun-ASR-Nano ``config.yaml`` names, or None if absent."""
        path = ctc_vocab_path(model_dir, config)
        if path is None:
            return None
        conf = _tokenizer_conf(config)
        return cls.from_file(
            path, num_languages=int(conf.get("num_languages", DEFAULT_NUM_LANGUAGES))
        )

    @property
    def vocab_size(self) -> int:
        """Ranks plus special tokens (60515 for the published vocabulary)."""
        return self.encoding.n_vocab

    def special_id(self, token: str) -> int:
        """Id of a special token such as ``"<|nospeech|>"``."""
        return self.encoding.encode_single_token(token)

    def encode(self, text: str) -> list[int]:
        """Ordinary-token ids of ``text``; special-token strings are encoded as plain text."""
        return self.encoding.encode(text, disallowed_special=())

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a token may hold part of a UTF-8 character)."""
        return self.encoding.decode_single_token_bytes(token_id)
