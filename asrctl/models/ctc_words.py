"""Word timestamps from CTC token spans, mapped back onto the text through byte offsets.

Byte-level BPE tokens may hold part of a UTF-8 character (a Chinese character can be split
over two tokens) or several characters, so tokens are never decoded one by one: each token
covers a byte range of the text, and a character is covered by every token its bytes touch.

Words:

* every CJK character (Han, kana, hangul) is a word of its own;
* other text splits on whitespace (and at CJK characters); punctuation inside such a run
  stays in its word (``don't``, ``3.14``, ``hello,``);
* punctuation standing apart (after whitespace or a CJK character) attaches to the
  preceding word (``好，``), except that opening brackets and quotes, and punctuation after
  whitespace that touches the next word (`` "hi``), lead the following word.

A word's time runs from the start of the first token covering its first letter to the end of
the last token covering its last letter; attached punctuation changes its text, not its time
(a word of punctuation only is timed by its own characters). Seconds are rounded to ms.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING

from asrctl.models.fun_asr_ctc import FRAME_SECONDS

if TYPE_CHECKING:
    from asrctl.models.ctc_tokenizer import CtcTokenizer
    from asrctl.models.fun_asr_ctc import TokenSpan

__all__ = ["WordTime", "split_words", "word_times"]

_CJK = re.compile(
    "["
    "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"  # hangul jamo, compatibility jamo, syllables
    "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"  # hiragana, katakana (+ half-width)
    "\u3005-\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # 々〆〇, Han, compatibility Han
    "\U00020000-\U0003134f"  # Han extensions B-G
    "]"
)
_OPENING = ("Ps", "Pi")  # Unicode categories of opening brackets and initial quotes


@dataclass(frozen=True)
class WordTime:
    """One word of the text with its time in the audio.

    Attributes:
        word: The word as it appears in the text (with attached punctuation).
        start: Start in seconds (ms precision).
        end: End in seconds (ms precision).
        score: Mean score (probability) of the tokens timing the word.
    """

    word: str
    start: float
    end: float
    score: float


@dataclass
class _Word:
    start: int  # char offsets into the text, end exclusive
    end: int
    timing: list[int] = field(default_factory=list)  # chars that time the word


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    if _CJK.match(ch):
        return "cjk"
    return "punct" if unicodedata.category(ch).startswith("P") else "letter"


def split_words(text: str) -> list[tuple[int, int, list[int]]]:
    """Words of ``text`` as ``(start, end, timing chars)`` character offsets (rules above)."""
    kinds = [_kind(ch) for ch in text]
    words: list[_Word] = []
    lead: int | None = None  # start of punctuation that leads the next word
    i = 0
    while i < len(text):
        kind, j = kinds[i], i + 1
        if kind == "cjk":
            words.append(_Word(i if lead is None else lead, j, [i]))
            lead = None
        elif kind == "letter":
            while j < len(text) and kinds[j] in ("letter", "punct"):
                j += 1
            timing = [k for k in range(i, j) if kinds[k] == "letter"]
            words.append(_Word(i if lead is None else lead, j, timing))
            lead = None
        elif kind == "punct":
            while j < len(text) and kinds[j] == "punct":
                j += 1
            if _leads(text, kinds, i, j) or not words:
                lead = i if lead is None else lead
            else:
                words[-1].end = j
        i = j
    if lead is not None:  # text of punctuation only
        words.append(
            _Word(lead, len(text), [k for k in range(lead, len(text)) if kinds[k] != "space"])
        )
    return [(w.start, w.end, w.timing) for w in words]


def _leads(text: str, kinds: list[str], i: int, j: int) -> bool:
    """Whether punctuation ``text[i:j]`` belongs to the word right after it."""
    if j == len(text) or kinds[j] not in ("letter", "cjk"):
        return False
    after_space = i == 0 or kinds[i - 1] == "space"
    return after_space or all(unicodedata.category(ch) in _OPENING for ch in text[i:j])


def word_times(
    text: str,
    tokenizer: CtcTokenizer,
    spans: Sequence[TokenSpan],
    frame_seconds: float = FRAME_SECONDS,
) -> list[WordTime]:
    """Time every word of ``text`` from the spans of its aligned CTC tokens.

    Args:
        text: The text whose ``tokenizer.encode(text)`` was aligned.
        tokenizer: The CTC tokenizer (for the bytes of each token).
        spans: The alignment of those tokens, one span per token in order; empty when the
            alignment failed, which gives no words.
        frame_seconds: Seconds per CTC frame.

    Raises:
        ValueError: The spans' tokens do not spell ``text``.
    """
    if not spans:
        return []
    pieces = [tokenizer.token_bytes(s.token_id) for s in spans]
    if b"".join(pieces) != text.encode("utf-8"):
        raise ValueError("the aligned tokens do not spell the text")
    token_ends = list(accumulate(len(p) for p in pieces))
    char_ends = list(accumulate(len(ch.encode("utf-8")) for ch in text))

    def token_at(byte: int) -> int:
        return bisect_right(token_ends, byte)

    out = []
    for start, end, timing in split_words(text):
        first_byte = char_ends[timing[0]] - len(text[timing[0]].encode("utf-8"))
        first, last = token_at(first_byte), token_at(char_ends[timing[-1]] - 1)
        scores = [s.score for s in spans[first : last + 1]]
        out.append(
            WordTime(
                word=text[start:end],
                start=round(spans[first].start_frame * frame_seconds, 3),
                end=round(spans[last].end_frame * frame_seconds, 3),
                score=sum(scores) / len(scores),
            )
        )
    return out
