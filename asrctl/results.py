"""Transcription results and the output folder they are appended to.

An output folder holds ``results.jsonl`` (one JSON object per utterance, the source of
truth), ``text`` (Kaldi: ``key transcript``) and ``failed.jsonl`` (inputs that could not be
transcribed, with the reason). Results are appended and flushed as each batch finishes, so
a killed job loses at most its in-flight batch. ``resume`` keeps every complete line of
``results.jsonl``, drops a torn last line, rebuilds ``text`` from it and reports which keys
are done, so a resumed job never writes a key twice. Failed inputs are retried on resume.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from asrctl.errors import AsrctlError

RESULTS = "results.jsonl"
TEXT = "text"
FAILED = "failed.jsonl"


@dataclass(frozen=True)
class Transcript:
    """The result for one utterance."""

    key: str
    text: str
    duration: float  # seconds of audio
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None  # "stop", or "length" when --max-tokens cut it
    timing: dict[str, float] = field(default_factory=dict)  # seconds, per stage
    # long audio (asrctl.segment): [{start, end, text}] in seconds from the input's start;
    # None when the input went through in one pass
    segments: tuple[dict, ...] | None = None
    guard_truncated: bool = False  # asrctl.guard cut a repetition loop off the text
    notes: tuple[str, ...] = ()  # e.g. that the model gives no word timestamps
    # [{word, start, end, score}] in seconds from the input's start (Fun-ASR-Nano's CTC
    # head); None when the model gives no word timing
    words: tuple[dict, ...] | None = None

    def to_json(self) -> dict:
        row = asdict(self)
        row.pop("token_ids")
        row["num_tokens"] = len(self.token_ids)
        unsets = (("segments", None), ("guard_truncated", False), ("notes", ()), ("words", None))
        for name, unset in unsets:
            if row[name] == unset:
                row.pop(name)  # rows of ordinary runs keep their shape
            elif name != "guard_truncated":
                row[name] = list(row[name])
        return row


@dataclass(frozen=True)
class Failure:
    """An input that could not be transcribed."""

    key: str
    error: str


class ResultsDir:
    """Append-only writer for an output folder; use as a context manager."""

    def __init__(self, out_dir: Path, *, resume: bool = False) -> None:
        self.out_dir = out_dir
        self.done: set[str] = set()
        out_dir.mkdir(parents=True, exist_ok=True)
        existing = (out_dir / RESULTS).exists() and (out_dir / RESULTS).stat().st_size > 0
        if existing and not resume:
            raise AsrctlError(
                f"{out_dir} already holds results ({RESULTS})",
                hint="pass --resume to continue that run, or choose another --output-dir",
            )
        if existing:
            self._recover()
        self._results: IO[str] = (out_dir / RESULTS).open("a", encoding="utf-8")
        self._text: IO[str] = (out_dir / TEXT).open("a" if existing else "w", encoding="utf-8")
        self._failed: IO[str] = (out_dir / FAILED).open("w", encoding="utf-8")
        self.n_failed = 0

    def _recover(self) -> None:
        """Keep the complete lines of results.jsonl and rebuild text from them."""
        path = self.out_dir / RESULTS
        good: list[str] = []
        rows: list[dict] = []
        # bytes.splitlines splits at \n and \r only (str.splitlines also at U+2028, U+0085,
        # which json.dumps leaves unescaped in a transcript)
        for line in path.read_bytes().splitlines(keepends=True):
            try:
                row = json.loads(line)
            except ValueError:  # also a torn multi-byte character (UnicodeDecodeError)
                break  # a torn line from a killed run: it and anything after are dropped
            if not line.endswith(b"\n") or row["key"] in self.done:
                break
            self.done.add(row["key"])
            good.append(line.decode("utf-8"))
            rows.append(row)
        _atomic_write(path, "".join(good))
        _atomic_write(self.out_dir / TEXT, "".join(_text_line(r["key"], r["text"]) for r in rows))

    def write(self, results: list[Transcript | Failure]) -> None:
        """Append one batch of results and flush them to disk."""
        for r in results:
            if isinstance(r, Failure):
                self._failed.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
                self.n_failed += 1
                continue
            self._results.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
            self._text.write(_text_line(r.key, r.text))
            self.done.add(r.key)
        for f in (self._results, self._text, self._failed):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self._results, self._text, self._failed):
            f.close()

    def __enter__(self) -> ResultsDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text_line(key: str, text: str) -> str:
    return f"{key} {' '.join(text.split())}\n"  # Kaldi text: one line, single spaces


def _atomic_write(path: Path, content: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)
