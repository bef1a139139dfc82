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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from asrctl.errors import AsrctlError, OptionsError

RESULTS = "results.jsonl"
TEXT = "text"
FAILED = "failed.jsonl"
REJECTED = "results.rejected"  # lines of results.jsonl that resume could not use
LOCK = ".asrctl.lock"


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
                raise AsrctlError(
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
        # which json.dumps leaves unescaped in a transcript)
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
