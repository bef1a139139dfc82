"""Repetition guard: cut a transcript where it falls into a loop.

LLM decoders can get stuck repeating a phrase ("thank you thank you thank you ...") until
``max_tokens``, above all on long or silent audio. :func:`truncate_loops` finds the earliest
run where a unit sequence of length 1..``max_period`` repeats back to back more often than
real speech does and keeps only its first copies.

Units are characters (Chinese, Japanese, or the unspaced output of a random-weight model)
and, when the text has spaces, also whitespace-separated words; character loops in spaced
text may then repeat twice as often (``ha ha ha ha ha`` is kept). A single unit may repeat
``max_single`` times ("哈哈哈", "no, no, no" are kept); a longer unit sequence may repeat
``max_repeats`` times. A cut keeps ``keep`` copies (``keep_single`` for single units).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_WORDS = re.compile(r"\S+")


@dataclass(frozen=True)
class GuardOptions:
    max_period: int = 32  # longest repeated unit sequence looked for (units)
    max_repeats: int = 4  # back-to-back copies allowed for sequences of 2+ units
    max_single: int = 10  # back-to-back copies allowed for a single unit
    keep: int = 2  # copies kept when a loop of 2+ units is cut
    keep_single: int = 3  # copies kept when a single-unit loop is cut


def truncate_loops(text: str, options: GuardOptions | None = None) -> tuple[str, bool]:
    """``(text, False)``, or the text cut after its loop's first copies and ``True``."""
    opts = options or GuardOptions()
    cuts = []
    spaced = " " in text.strip()
    if spaced:  # word loops, and (less strictly) character loops inside words
        spans = [m.span() for m in _WORDS.finditer(text)]
        cut = _first_loop([text[a:b] for a, b in spans], opts)
        if cut is not None:
            cuts.append(spans[cut - 1][1])
        char_opts = replace(opts, max_repeats=2 * opts.max_repeats)
    else:
        char_opts = opts
    cut = _first_loop(list(text), char_opts)
    if cut is not None:
        cuts.append(cut)
    if not cuts:
        return text, False
    return text[: min(cuts)].rstrip(), True


def truncate_token_loops(
    token_ids: tuple[int, ...] | list[int], options: GuardOptions | None = None
) -> int | None:
    """How many leading tokens to keep (None: no loop), for callers that hold token ids."""
    return _first_loop(list(token_ids), options or GuardOptions())


def _first_loop(units: list, opts: GuardOptions) -> int | None:
    """Index after the kept copies of the earliest loop, or None."""
    n = len(units)
    best: int | None = None
    for period in range(1, min(opts.max_period, n // 2) + 1):
        allowed = opts.max_single if period == 1 else opts.max_repeats
        keep = opts.keep_single if period == 1 else opts.keep
        need = allowed * period  # matching units beyond the first copy that make a loop
        run = 0  # units[i] == units[i - period] for this many consecutive i
        for i in range(period, n):
            if best is not None and i - run >= best:
                break  # a loop found here could not start earlier than the best one
            if units[i] == units[i - period]:
                run += 1
                if run >= need:
                    start = i - run + 1 - period  # first unit of the first copy
                    end = start + keep * period
                    if best is None or end < best:
                        best = end
                    break
            else:
                run = 0
    return best
