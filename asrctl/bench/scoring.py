"""Accuracy scoring: reference files, one normaliser per language, CER/WER with jiwer.

Normalisers (applied to reference and hypothesis alike):

* ``zh``/``yue``/``ja``/``ko`` (CJK): Unicode NFKC (full-width letters, digits and
  punctuation folded to half-width), optionally traditional → simplified Chinese
  (``t2s``, OpenCC's ``t2s`` table; ``pip install 'asrctl[zh]'``), Latin letters
  lower-cased, every punctuation mark and symbol (Unicode categories P* and S*, CJK and
  ASCII alike) replaced by a space.
* ``en``: Whisper's ``EnglishTextNormalizer`` (package ``whisper-normalizer``, as the Open
  ASR Leaderboard uses it): lower case, contractions and titles spelled out ("mr" →
  "mister", "'s" → " is"), numbers and British spellings standardised, symbols removed.
* anything else (or no language): Whisper's ``BasicTextNormalizer``, diacritics kept:
  lower case, bracketed spans removed, punctuation and symbols replaced by spaces.

Units: ``wer`` counts whitespace-delimited words. ``cer`` on a CJK language counts every
Han, kana or Hangul character as one token and every run of other characters (Latin
words, numbers) as one token, spaces never counting; this is FireRedASR's mixed error
rate and, on purely Chinese text, exactly the character error rate. ``cer`` forced on a
non-CJK language counts characters, spaces included (jiwer's ``cer``).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from asrctl.errors import InputError, OptionsError

CJK_LANGUAGES = frozenset({"zh", "yue", "ja", "ko"})
T2S_LANGUAGES = frozenset({"zh", "yue"})
METRICS = ("cer", "wer")
KEY_FIELDS = ("key", "utt", "id")  # jsonl fields holding the key, first found wins
MISSING_SHOWN = 5  # keys listed when some are missing on one side
# Han (incl. extensions and compatibility), kana, Hangul: one token each in mixed units.
_CJK = (
    r"\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3040-\u30ff\u3100-\u312f\u3131-\u318f"
    r"\u31a0-\u31bf\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
    r"\U00020000-\U0003134f"
)
_MIXED_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u3131-\u318f]")


@dataclass(frozen=True)
class ScoringSpec:
    """How hypotheses are compared with references."""

    language: str | None  # the normaliser's language (None: the basic normaliser)
    metric: str  # "cer" | "wer"
    unit: str  # "word" | "mixed" (CJK characters + other words) | "char"
    normaliser: str  # one line describing the normaliser, for reports
    t2s: bool = False

    @property
    def normalise(self) -> Callable[[str], str]:
        return _normaliser(self.language, self.t2s)


@dataclass(frozen=True)
class Counts:
    """Alignment counts (in the spec's units)."""

    n: int  # reference tokens
    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def error_rate(self) -> float | None:
        """Errors / reference tokens; None for an empty reference."""
        return self.errors / self.n if self.n else None


@dataclass(frozen=True)
class UtteranceScore(Counts):
    """One utterance's texts and alignment counts."""

    key: str
    ref: str
    hyp: str
    ref_norm: str
    hyp_norm: str


@dataclass(frozen=True)
class Totals(Counts):
    """The counts summed over the scored utterances."""

    utterances: int


@dataclass(frozen=True)
class KeyMatch:
    """Which keys have both a reference and a hypothesis."""

    scored: tuple[str, ...]
    missing_hypothesis: tuple[str, ...]  # references without a transcript
    missing_reference: tuple[str, ...]  # transcripts without a reference


@dataclass(frozen=True)
class Score:
    spec: ScoringSpec
    keys: KeyMatch
    utterances: tuple[UtteranceScore, ...]
    totals: Totals


def base_language(language: str | None) -> str | None:
    """``"zh-CN"`` → ``"zh"``; ``None``/``"auto"`` → None."""
    if not language or language.lower() == "auto":
        return None
    return re.split(r"[-_]", language.strip().lower())[0]


def infer_language(texts: Sequence[str]) -> str | None:
    """``zh``/``ja``/``ko`` when CJK characters outnumber other words in ``texts``, else None."""
    joined = " ".join(texts)
    cjk = len(_CJK_CHAR.findall(joined))
    others = sum(1 for t in _MIXED_TOKEN.findall(joined) if not _CJK_CHAR.match(t))
    if not cjk or cjk < others:
        return None
    if _KANA.search(joined):
        return "ja"
    return "ko" if len(_HANGUL.findall(joined)) > cjk / 2 else "zh"


def make_spec(language: str | None, metric: str | None = None, t2s: bool = False) -> ScoringSpec:
    """The scoring spec for a language, with an optional metric override."""
    lang = base_language(language)
    if metric is not None and metric not in METRICS:
        raise OptionsError(f"unknown metric {metric!r}", hint="use cer or wer")
    if t2s and lang not in T2S_LANGUAGES:
        raise OptionsError("--t2s applies to Chinese only", hint="pass --language zh")
    cjk = lang in CJK_LANGUAGES
    metric = metric or ("cer" if cjk else "wer")
    unit = "word" if metric == "wer" else ("mixed" if cjk else "char")
    if cjk:
        what = "NFKC, lower case, punctuation and symbols removed" + (
            ", traditional → simplified (OpenCC t2s)" if t2s else ""
        )
    elif lang == "en":
        what = "Whisper EnglishTextNormalizer (whisper-normalizer)"
    else:
        what = "Whisper BasicTextNormalizer (whisper-normalizer), diacritics kept"
    if t2s:
        _t2s_converter()  # fail now, not after the transcription
    return ScoringSpec(language=lang, metric=metric, unit=unit, normaliser=what, t2s=t2s)


@functools.cache
def _normaliser(language: str | None, t2s: bool) -> Callable[[str], str]:
    if language in CJK_LANGUAGES:
        convert = _t2s_converter() if t2s else None
        return functools.partial(normalise_cjk, convert=convert)
    try:
        if language == "en":
            from whisper_normalizer.english import EnglishTextNormalizer

            return EnglishTextNormalizer()
        from whisper_normalizer.basic import BasicTextNormalizer
    except ImportError as e:
        raise OptionsError(
            f"scoring needs the whisper-normalizer package ({e})",
            hint="pip install whisper-normalizer",
        ) from e
    return BasicTextNormalizer(remove_diacritics=False)


@functools.cache
def _t2s_converter() -> Callable[[str], str]:
    try:
        import opencc
    except ImportError as e:
        raise OptionsError(
            "--t2s needs OpenCC", hint="pip install 'asrctl[zh]' (or: pip install opencc)"
        ) from e
    return opencc.OpenCC("t2s").convert


def normalise_cjk(text: str, convert: Callable[[str], str] | None = None) -> str:
    """The CJK normaliser: NFKC, optional t2s, lower case, punctuation/symbols → spaces."""
    text = unicodedata.normalize("NFKC", text)
    if convert is not None:
        text = convert(text)
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text.lower())
    return " ".join(text.split())


def tokens(text: str, unit: str) -> list[str]:
    """Split normalised text into scoring units (see the module docstring)."""
    if unit == "word":
        return text.split()
    if unit == "mixed":
        return _MIXED_TOKEN.findall(text)
    return list(" ".join(text.split()))


def _align(ref: str, hyp: str, unit: str):
    import jiwer

    if unit == "char":
        return jiwer.process_characters([ref], [hyp])
    return jiwer.process_words([" ".join(tokens(ref, unit))], [" ".join(tokens(hyp, unit))])


def score_utterance(key: str, ref: str, hyp: str, spec: ScoringSpec) -> UtteranceScore:
    """Normalise both sides and count hits, substitutions, deletions and insertions."""
    ref_norm, hyp_norm = spec.normalise(ref), spec.normalise(hyp)
    out = _align(ref_norm, hyp_norm, spec.unit)
    return UtteranceScore(
        key=key,
        ref=ref,
        hyp=hyp,
        ref_norm=ref_norm,
        hyp_norm=hyp_norm,
        n=out.hits + out.substitutions + out.deletions,
        hits=out.hits,
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
    )


def alignment(utt: UtteranceScore, spec: ScoringSpec) -> str:
    """``REF:``/``HYP:`` lines with S/D/I marks under the differences (jiwer)."""
    import jiwer

    text = jiwer.visualize_alignment(
        _align(utt.ref_norm, utt.hyp_norm, spec.unit), show_measures=False, skip_correct=False
    )
    return "\n".join(line for line in text.splitlines() if line and not line.startswith("==="))


def match_keys(refs: Mapping[str, str], hyps: Mapping[str, str]) -> KeyMatch:
    return KeyMatch(
        scored=tuple(k for k in refs if k in hyps),
        missing_hypothesis=tuple(k for k in refs if k not in hyps),
        missing_reference=tuple(k for k in hyps if k not in refs),
    )


def score(refs: Mapping[str, str], hyps: Mapping[str, str], spec: ScoringSpec) -> Score:
    """Score the keys present on both sides (in reference order); report the others."""
    keys = match_keys(refs, hyps)
    utts = tuple(score_utterance(k, refs[k], hyps[k], spec) for k in keys.scored)
    totals = Totals(
        utterances=len(utts),
        n=sum(u.n for u in utts),
        hits=sum(u.hits for u in utts),
        substitutions=sum(u.substitutions for u in utts),
        deletions=sum(u.deletions for u in utts),
        insertions=sum(u.insertions for u in utts),
    )
    return Score(spec=spec, keys=keys, utterances=utts, totals=totals)


def worst(utts: Sequence[UtteranceScore], n: int) -> list[UtteranceScore]:
    """The ``n`` utterances with the most errors (ties: higher error rate first)."""
    ranked = sorted(utts, key=lambda u: (u.errors, u.error_rate or 0.0), reverse=True)
    return [u for u in ranked[:n] if u.errors]


def read_references(path: Path) -> dict[str, str]:
    """Read a Kaldi ``text`` file (``KEY TRANSCRIPT``) or a jsonl of ``{"key", "text"}``.

    Raises:
        InputError: The file is missing, malformed or repeats a key.
    """
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the reference file {path}: {e}") from e
    lines = [(n, line.strip()) for n, line in enumerate(raw.split("\n"), 1) if line.strip()]
    if not lines:
        raise InputError(f"{path}: the reference file is empty")
    jsonl = path.suffix.lower() == ".jsonl" or lines[0][1].startswith("{")
    refs: dict[str, str] = {}
    for n, line in lines:
        key, text = _jsonl_ref(line, f"{path}:{n}") if jsonl else _kaldi_ref(line)
        if key in refs:
            raise InputError(f"{path}:{n}: duplicate key {key!r}", hint="keys must be unique")
        refs[key] = text
    return refs


def _kaldi_ref(line: str) -> tuple[str, str]:
    parts = line.split(maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _jsonl_ref(line: str, where: str) -> tuple[str, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg})") from e
    key = next((row[f] for f in KEY_FIELDS if isinstance(row, dict) and f in row), None)
    text = row.get("text") if isinstance(row, dict) else None
    if key is None or not isinstance(text, str):
        raise InputError(f'{where}: expected {{"key": ..., "text": "..."}}, got {line[:80]!r}')
    return str(key), text
