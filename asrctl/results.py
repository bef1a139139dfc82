"""Transcription results and the output folder they are appended to.

An output folder holds ``results.jsonl`` (one JSON object per utterance, the source of
truth), ``text`` (Kaldi: ``key transcript``) and ``failed.jsonl`` (inputs that could not be
transcribed, with the reason). Results are appended and flushed as each batch finishes, so
a killed job loses at most its in-flight batch. ``resume`` keeps every complete result
line of ``results.jsonl``, drops a torn last line (what a kill leaves), rebuilds ``text``
from it and reports which keys are done, so a resumed job never writes a key twice. Any
other line that is not a result (garbage, a repeated key) is moved to
``results.rejected`` and reported in :attr:`ResultsDir.recovery`; the valid rows after it
are kept. Failed inputs are retried on resume.

One run at a time writes to a folder: it holds an exclusive lock on ``.asrctl.lock``
(``flock``, released when the process ends, however it ends) and a second run into the
same folder stops at once with an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from asrctl.errors import OptionsError

RESULTS = "results.jsonl"
TEXT = "text"
FAILED = "failed.jsonl"
REJECTED = "results.rejected"  # lines of results.jsonl that resume could not use
LOCK = ".asrctl.lock"


@dataclass(frozen=True)
class Word:
    """One word and where it is in the audio (seconds from the input's start).

    Attributes:
        word: the word as written in the text (with attached punctuation).
        start: start in seconds.
        end: end in seconds.
        score: the aligner's confidence (mean token probability), where it gives one.
    """

    word: str
    start: float
    end: float
    score: float | None = None

    def shifted(self, offset: float) -> Word:
        """The same word ``offset`` seconds later (a segment's words onto its input's clock)."""
        return replace(self, start=round(self.start + offset, 3), end=round(self.end + offset, 3))

    def to_json(self) -> dict[str, Any]:
        return {"word": self.word, "start": self.start, "end": self.end, "score": self.score}


@dataclass(frozen=True)
class Segment:
    """A stretch of the audio and its text: a VAD segment, or a segment the model writes
    itself (VibeVoice-ASR, with its speaker). Times in seconds from the input's start.

    Attributes:
        start: start in seconds (None where the model gave none).
        end: end in seconds (None where the model gave none).
        text: the segment's transcript.
        tokens: its generated token ids, where it was decoded on its own (VAD segments).
        speaker: the speaker the model or the diarizer assigned, where there is one.
    """

    start: float | None
    end: float | None
    text: str
    tokens: tuple[int, ...] = ()
    speaker: int | str | None = None

    def shifted(self, offset: float) -> Segment:
        """The same segment ``offset`` seconds later (None times stay None)."""
        return replace(
            self,
            start=None if self.start is None else round(self.start + offset, 3),
            end=None if self.end is None else round(self.end + offset, 3),
        )

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"start": self.start, "end": self.end, "text": self.text}
        if self.speaker is not None:
            row["speaker"] = self.speaker
        return row


@dataclass(frozen=True)
class Transcript:
    """The result for one input, whichever entry point produced it (batch, server, library).

    Attributes:
        key: the input's key (a request id on the server).
        text: the transcript, cleaned as the family does (see ``DecodeOptions.raw_text``).
        duration: seconds of audio.
        token_ids: the generated token ids.
        finish_reason: "stop", or "length" when the token cap cut the text.
        timing: wall seconds per stage (``batch_encode_s``, ``decode_s``).
        segments: VAD segments of a long input, or the model's own segments; None when the
            input went through in one pass and the model gives none.
        guard_truncated: the repetition guard cut a loop off the text.
        notes: remarks on the result (e.g. that the model gives no word timestamps).
        words: timed words where the model times them; None otherwise.
        prompt_tokens: prompt positions (text + audio) the LLM read.
        audio_tokens: of which audio embeddings.
        avg_logprob: mean log-probability of the generated tokens, when asked for.
        language: the language the model stated, where it states one.
    """

    key: str
    text: str
    duration: float
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    segments: tuple[Segment, ...] | None = None
    guard_truncated: bool = False
    notes: tuple[str, ...] = ()
    words: tuple[Word, ...] | None = None
    prompt_tokens: int = 0
    audio_tokens: int = 0
    avg_logprob: float | None = None
    language: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``results.jsonl`` row: unset optional fields are left out, so rows of
        ordinary runs keep their shape."""
        row: dict[str, Any] = {
            "key": self.key,
            "text": self.text,
            "duration": self.duration,
            "finish_reason": self.finish_reason,
            "timing": dict(self.timing),
            "num_tokens": len(self.token_ids),
        }
        if self.segments is not None:
            row["segments"] = [s.to_json() for s in self.segments]
        if self.guard_truncated:
            row["guard_truncated"] = True
        if self.notes:
            row["notes"] = list(self.notes)
        if self.words is not None:
            row["words"] = [w.to_json() for w in self.words]
        if self.language is not None:
            row["language"] = self.language
        return row


@dataclass(frozen=True)
class Failure:
    """An input that could not be transcribed."""

    key: str
    error: str


@dataclass(frozen=True)
class Recovery:
    """What ``resume`` found in ``results.jsonl``.

    Attributes:
        kept: result rows kept (their keys are done).
        torn: a torn last line (a killed run's) was dropped; its key is transcribed again.
        rejected: 1-based numbers of lines moved to ``results.rejected``: not a result
            (garbage, JSON that is not a result object) or a key already seen.
    """

    kept: int
    torn: bool = False
    rejected: tuple[int, ...] = ()


# json.dumps(ensure_ascii=False) leaves these raw inside strings, and Python's
# str.splitlines() (like JavaScript before ES2019) takes each for a line break; escaped, a
# JSON Lines file splits into its objects however it is read. Random-weight models and
# real transcripts can emit them.
_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def json_line(obj: Any) -> str:
    """``obj`` as one JSON Lines line (without its newline): readable UTF-8, but with the
    characters that some line readers split on escaped."""
    return json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)


class ResultsDir:
    """Append-only writer for an output folder; use as a context manager."""

    def __init__(self, out_dir: Path, *, resume: bool = False) -> None:
        self.out_dir = out_dir
        self.done: set[str] = set()
        self.recovery: Recovery | None = None
        out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(out_dir)
        try:
            existing = (out_dir / RESULTS).exists() and (out_dir / RESULTS).stat().st_size > 0
            if existing and not resume:
                raise OptionsError(
                    f"{out_dir} already holds results ({RESULTS})",
                    hint="pass --resume to continue that run, or choose another --output-dir",
                )
            if existing:
                self.recovery = self._recover()
            self._results: IO[str] = (out_dir / RESULTS).open("a", encoding="utf-8")
            self._text: IO[str] = (out_dir / TEXT).open("a" if existing else "w", encoding="utf-8")
            self._failed: IO[str] = (out_dir / FAILED).open("w", encoding="utf-8")
        except BaseException:
            self._lock.close()
            raise
        self.n_failed = 0

    def _recover(self) -> Recovery:
        """Keep the result lines of results.jsonl, set aside the others, rebuild text."""
        path = self.out_dir / RESULTS
        good: list[str] = []
        rows: list[dict] = []
        rejected: list[tuple[int, bytes]] = []
        # bytes.splitlines splits at \n and \r only (str.splitlines also at U+2028, U+0085,
        # which json_line escapes but files from before it may hold raw in a transcript)
        lines = path.read_bytes().splitlines(keepends=True)
        torn = bool(lines) and not lines[-1].endswith(b"\n")
        if torn:
            lines.pop()  # a killed run's last write: dropped, its key is redone
        for number, line in enumerate(lines, 1):
            row = _result_row(line)
            if row is None or row["key"] in self.done:
                rejected.append((number, line))
                continue
            self.done.add(row["key"])
            good.append(line.decode("utf-8"))
            rows.append(row)
        if rejected:
            with (self.out_dir / REJECTED).open("ab") as f:
                f.writelines(line for _, line in rejected)
        _atomic_write(path, "".join(good))
        _atomic_write(self.out_dir / TEXT, "".join(_text_line(r["key"], r["text"]) for r in rows))
        return Recovery(len(rows), torn, tuple(n for n, _ in rejected))

    def write(self, results: list[Transcript | Failure]) -> None:
        """Append one batch of results and flush them to disk."""
        for r in results:
            if isinstance(r, Failure):
                self._failed.write(json_line(asdict(r)) + "\n")
                self.n_failed += 1
                continue
            self._results.write(json_line(r.to_json()) + "\n")
            self._text.write(_text_line(r.key, r.text))
            self.done.add(r.key)
        for f in (self._results, self._text, self._failed):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self._results, self._text, self._failed):
            f.close()
        self._lock.close()

    def __enter__(self) -> ResultsDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text_line(key: str, text: str) -> str:
    return f"{key} {' '.join(text.split())}\n"  # Kaldi text: one line, single spaces


def _result_row(line: bytes) -> dict | None:
    """The row of a results.jsonl line, or None if it is not a result."""
    try:
        row = json.loads(line)
    except ValueError:  # also invalid UTF-8 (UnicodeDecodeError)
        return None
    if not isinstance(row, dict) or not isinstance(row.get("key"), str) or not row["key"]:
        return None
    return row if isinstance(row.get("text"), str) else None


def _lock(out_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on the folder's lock file (OptionsError if another holds it)."""
    import fcntl

    handle = (out_dir / LOCK).open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OptionsError(
            f"another asrctl run is writing to {out_dir}",
            hint="wait for it to finish, or choose another --output-dir",
        ) from None
    return handle


def _atomic_write(path: Path, content: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)
