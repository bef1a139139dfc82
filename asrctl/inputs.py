"""Turn what the user points at (files, folders, Kaldi lists, manifests) into keyed audio items.

Accepted specs, told apart by what is on disk:

* an audio file: one item, key = the file name without extension;
* a folder holding ``wav.scp``: a Kaldi data dir (its ``segments`` and ``text`` are used too);
* any other folder: every audio file below it, recursively, in sorted order. Key = the path
  relative to the folder without its extension, with ``/`` replaced by ``__`` and whitespace by
  ``_`` (``a/b c.wav`` -> ``a__b_c``). Hidden files and folders (``.name``) are skipped;
* a ``segments`` file: Kaldi segments, read with the ``wav.scp`` next to it;
* a folder written by Hugging Face ``datasets``' ``save_to_disk`` (a Dataset or a
  DatasetDict): one item per row, read lazily (:mod:`asrctl.hf_datasets`);
* a ``.jsonl`` file, or a text file whose first entry starts with ``{``: a JSON-lines manifest,
  asrctl's own (``key``, ``audio``, ``start``, ``end``, ``text``) or NeMo's (``audio_filepath``,
  ``offset``, ``duration``, ``text``; keyless lines are keyed by the file name, or
  ``name-START-END`` in centiseconds where several lines cut the same file);
* any other text file: ``wav.scp`` lines ``KEY VALUE``, where VALUE is a path, a shell command
  ending in ``|`` whose stdout is an audio file, or a Kaldi ark entry ``file.ark:OFFSET``.

Relative paths in a wav.scp are resolved against the working directory (Kaldi convention), or
against the wav.scp's folder when only found there; in a manifest, against its folder. A missing
audio file is not an input error: loading that item raises AudioError and the others still run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from asrctl.audio import PYAV_EXTENSIONS, audio_duration, load_audio
from asrctl.errors import AudioError, InputError, OptionsError

# Extensions (lower case, no dot) collected when scanning a folder.
AUDIO_EXTENSIONS = frozenset(
    {"wav", "flac", "ogg", "mp3", "m4a", "webm", "mp4", "opus", "aac", "wma"}
)
# Extensions also taken as audio when a single file is given.
FILE_EXTENSIONS = AUDIO_EXTENSIONS | PYAV_EXTENSIONS | {"aiff", "aif", "au", "caf", "sph", "w64"}
KEY_FIELDS = ("key", "utt", "id")  # manifest fields holding the key, first found wins
AUDIO_FIELDS = ("audio", "audio_filepath", "wav", "path")  # manifest fields holding the audio
SNIFF_BYTES = 4096  # bytes read to tell a binary (audio) file from a text list
STDERR_TAIL_CHARS = 500  # characters of a failed pipe's stderr kept in the error
PIPE_CACHE_SIZE = 1  # pipe outputs kept for segments cut from the same recording
PIPE_TIMEOUT_ENV = "ASRCTL_PIPE_TIMEOUT"  # seconds a wav.scp `cmd |` may run
PIPE_TIMEOUT_S = 300.0  # its default
# what AudioItem.source holds; "dataset": "<saved datasets folder>#<row>" (asrctl.hf_datasets)
KINDS = ("path", "pipe", "ark", "bytes", "array", "dataset")
_ARK_RE = re.compile(r"^(?P<path>\S+):(?P<offset>\d+)(?P<slice>\[[\d:,]*\])?$")


@dataclass(frozen=True, eq=False)
class AudioItem:
    """One input to transcribe: where its audio comes from and which part of it to use."""

    key: str
    source: str | bytes | np.ndarray = field(repr=False)  # path, "cmd |", "f.ark:12", data
    kind: str  # one of KINDS
    start: float = 0.0  # seconds from the beginning of the source
    end: float | None = None  # seconds; None = to the end
    source_rate: int | None = None  # Hz, for arrays
    text: str | None = None  # reference transcript, when the input list carries one

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"AudioItem.kind must be one of {KINDS}, got {self.kind!r}")

    def load(self, sample_rate: int) -> np.ndarray:
        """Decode the item as float32 mono samples at ``sample_rate``, cut to ``[start, end)``.

        Raises:
            AudioError: The audio cannot be read; the error names ``self.key``.
        """
        source, rate = self.source, self.source_rate
        if self.kind == "pipe":
            source = _pipe_bytes(str(source), self.key, cached=self.is_segment)
        elif self.kind == "ark":
            rate, source = _read_ark(str(source), self.key)
        elif self.kind == "dataset":
            from asrctl.hf_datasets import read_row

            source, rate = read_row(str(source), self.key)
        return load_audio(
            source,
            sample_rate=sample_rate,
            key=self.key,
            source_rate=rate,
            start=self.start,
            end=self.end,
        )

    def duration(self) -> float | None:
        """Return the length in seconds if known cheaply (never runs pipes), else ``None``."""
        if self.end is not None:
            return self.end - self.start
        source, rate, total = self.source, self.source_rate, None
        if self.kind == "dataset":  # reads the row's bytes (memory-mapped), never decodes
            from asrctl.hf_datasets import read_row

            try:
                source, rate = read_row(str(source), self.key)
            except AudioError:
                return None
        if isinstance(source, np.ndarray) and rate:
            total = len(source) / rate
        elif isinstance(source, bytes) or self.kind in ("path", "dataset"):
            total = audio_duration(source)  # type: ignore[arg-type]
        return None if total is None else max(0.0, total - self.start)

    @property
    def is_segment(self) -> bool:
        """Whether the item is a part of its source rather than all of it."""
        return self.start > 0.0 or self.end is not None


def iter_inputs(
    spec: str | os.PathLike[str] | AudioItem | Sequence[str | os.PathLike[str] | AudioItem],
) -> list[AudioItem]:
    """Expand input specs (files, folders, Kaldi lists, manifests) into audio items.

    Args:
        spec: One spec or a sequence of them, merged in order. See the module docstring.

    Returns:
        The items, in input order.

    Raises:
        InputError: A spec is missing or malformed, or two items share a key.
    """
    specs = [spec] if isinstance(spec, str | os.PathLike | AudioItem) else list(spec)
    items: dict[str, AudioItem] = {}
    for one in specs:
        if isinstance(one, str) and not one.strip():
            raise InputError("an input spec is an empty string")
        found = [one] if isinstance(one, AudioItem) else _expand(Path(one))
        for item in found:
            _add(items, item, str(one))
    return list(items.values())


def from_arrays(
    arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray], sample_rate: int
) -> list[AudioItem]:
    """Wrap in-memory sample arrays as items.

    Args:
        arrays: Arrays keyed by name, or a sequence keyed ``0000``, ``0001``, ...
        sample_rate: Rate of every array, in Hz.

    Returns:
        One ``array`` item per input, in order.

    Raises:
        InputError: An entry is not a numpy array or the rate is not positive.
    """
    if sample_rate <= 0:
        raise InputError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    if isinstance(arrays, Mapping):
        pairs = [(str(k), v) for k, v in arrays.items()]
    else:
        width = max(4, len(str(len(arrays) - 1)))
        pairs = [(f"{i:0{width}d}", v) for i, v in enumerate(arrays)]
    items: dict[str, AudioItem] = {}
    for key, array in pairs:
        if not isinstance(array, np.ndarray):
            raise InputError(f"{key}: expected a numpy array, got {type(array).__name__}")
        _add(items, AudioItem(key, array, "array", source_rate=sample_rate), "arrays")
    return list(items.values())


def _expand(path: Path) -> list[AudioItem]:
    if not path.exists():
        raise InputError(f"no such file or directory: {path}")
    if path.is_dir():
        if (path / "wav.scp").is_file():
            segments = path / "segments"
            return _from_kaldi(path / "wav.scp", segments if segments.is_file() else None)
        from asrctl.hf_datasets import is_saved_dataset, items_from_dataset

        if is_saved_dataset(path):
            return items_from_dataset(path)
        return _from_folder(path)
    if path.name == "segments":
        if not (path.parent / "wav.scp").is_file():
            raise InputError(f"{path}: a segments file needs a wav.scp next to it")
        return _from_kaldi(path.parent / "wav.scp", path)
    if path.suffix.lower().lstrip(".") in FILE_EXTENSIONS or _is_binary(path):
        return [AudioItem(_path_key(Path(path.name)), os.path.abspath(path), "path")]
    lines = _lines(path)
    if path.suffix.lower() == ".jsonl" or lines[0][1].startswith("{"):
        return _from_manifest(path, lines)
    return _from_kaldi(path, None)


def _from_folder(folder: Path) -> list[AudioItem]:
    found = sorted(
        p.relative_to(folder)
        for p in folder.rglob("*")
        if p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS and p.is_file()
    )
    items: dict[str, AudioItem] = {}
    for rel in found:
        if any(part.startswith(".") for part in rel.parts):
            continue
        key = _path_key(rel)
        if key in items:
            raise InputError(
                f"{folder}: files {items[key].source!s} and {folder / rel} both get key {key!r}",
                hint="rename one of them, or list the files in a wav.scp with your own keys",
            )
        items[key] = AudioItem(key, os.path.abspath(folder / rel), "path")
    if not items:
        raise InputError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under {folder}")
    return list(items.values())


def _from_kaldi(wav_scp: Path, segments: Path | None) -> list[AudioItem]:
    items = _parse_scp(wav_scp)
    if segments is not None:
        items = _parse_segments(segments, items, wav_scp)
    texts = _parse_text(wav_scp.parent / "text") if wav_scp.name == "wav.scp" else {}
    return [replace(item, text=texts.get(item.key)) for item in items.values()]


def _parse_scp(path: Path) -> dict[str, AudioItem]:
    items: dict[str, AudioItem] = {}
    for lineno, line in _lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise InputError(
                f"{path}:{lineno}: expected 'KEY AUDIO' where AUDIO is a path, 'command |' "
                f"or 'file.ark:OFFSET', got {line!r}"
            )
        source, kind = _source(parts[1], path.parent, cwd_first=True)
        _add(items, AudioItem(parts[0], source, kind), f"{path}:{lineno}")
    return items


def _parse_segments(
    path: Path, recordings: dict[str, AudioItem], wav_scp: Path
) -> dict[str, AudioItem]:
    items: dict[str, AudioItem] = {}
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        parts = line.split()
        expected = "expected 'UTTERANCE RECORDING START END' (seconds; END -1 = to the end)"
        if len(parts) != 4:
            raise InputError(f"{where}: {expected}, got {line!r}")
        start, end = _seconds(parts[2], where), _seconds(parts[3], where, allow_minus_one=True)
        if parts[1] not in recordings:
            raise InputError(f"{where}: recording {parts[1]!r} is not in {wav_scp}")
        stop = checked_end(start, end, where)
        item = replace(recordings[parts[1]], key=parts[0], start=start, end=stop)
        _add(items, item, where)
    return items


def _parse_text(path: Path) -> dict[str, str]:
    """Read a Kaldi ``text`` file (``UTT WORDS...``) next to a wav.scp, if there is one."""
    if not path.is_file():
        return {}
    pairs = [line.split(maxsplit=1) for _, line in _lines(path, allow_empty=True)]
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


@dataclass(frozen=True)
class _Entry:
    """One parsed manifest line, before its key is settled."""

    where: str
    audio: str
    key: str | None
    start: float
    end: float | None
    text: str | None

    @property
    def stem(self) -> str:
        return _path_key(Path(Path(self.audio).name))

    @property
    def segment_key(self) -> str:
        """``stem-SSSSSSS-EEEEEEE`` (start and end in centiseconds, Kaldi style)."""
        end = "end" if self.end is None else f"{round(self.end * 100):07d}"
        return f"{self.stem}-{round(self.start * 100):07d}-{end}"


def _from_manifest(path: Path, lines: list[tuple[int, str]]) -> list[AudioItem]:
    """asrctl's jsonl and NeMo manifests. A line without a key is keyed by its file's
    name; when several keyless lines cut the same file name (NeMo segments), each is
    keyed ``stem-START-END`` (centiseconds), so keys stay unique and stable."""
    entries = [_entry(line, f"{path}:{lineno}") for lineno, line in lines]
    shared = Counter(e.stem for e in entries if e.key is None)
    items: dict[str, AudioItem] = {}
    for e in entries:
        key = e.key if e.key is not None else e.stem
        if e.key is None and shared[e.stem] > 1:
            key = e.segment_key
        source, kind = _source(e.audio, path.parent, cwd_first=False)
        _add(items, AudioItem(key, source, kind, e.start, e.end, text=e.text), e.where)
    return list(items.values())


def _entry(line: str, where: str) -> _Entry:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object, got {line[:60]!r}")
    audio = next((record[f] for f in AUDIO_FIELDS if f in record), None)
    if not isinstance(audio, str) or not audio.strip():
        raise InputError(f"{where}: expected an audio path in one of {', '.join(AUDIO_FIELDS)}")
    key = next((record[f] for f in KEY_FIELDS if f in record), None)
    if key is not None and (not str(key) or any(c.isspace() for c in str(key))):
        raise InputError(f"{where}: key {str(key)!r} is empty or contains whitespace")
    start = _field(record, ("start", "offset"), where) or 0.0
    end = _field(record, ("end",), where)
    length = _field(record, ("duration",), where)
    if end is None and length is not None:
        end = start + length
    text = record.get("text")
    if text is not None and not isinstance(text, str):
        raise InputError(f"{where}: 'text' must be a string")
    end = checked_end(start, end, where)
    return _Entry(where, audio, None if key is None else str(key), start, end, text)


def _source(value: str, base: Path, *, cwd_first: bool) -> tuple[str, str]:
    """Classify a wav.scp/manifest audio value as (source, kind), resolving relative paths."""
    value = value.strip()
    if value.endswith("|"):
        return value, "pipe"
    match = _ARK_RE.match(value)
    if match and not _resolve(value, base, cwd_first).exists():
        ark = _resolve(match["path"], base, cwd_first)
        return f"{ark}:{match['offset']}{match['slice'] or ''}", "ark"
    return str(_resolve(value, base, cwd_first)), "path"


def _resolve(value: str, base: Path, cwd_first: bool) -> Path:
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    beside = Path(os.path.abspath(base / path))
    if not cwd_first or (not path.exists() and beside.exists()):
        return beside
    return Path(os.path.abspath(path))


def _pipe_bytes(command: str, key: str, *, cached: bool) -> bytes:
    """Run a wav.scp pipe command and return its stdout, or raise AudioError naming ``key``."""
    command = command.rstrip().removesuffix("|").strip()
    timeout = pipe_timeout()
    code, out, err = (_run_cached if cached else _run)(command, timeout)
    tail = err.decode(errors="replace").strip()[-STDERR_TAIL_CHARS:] or "(no stderr)"
    if code is None:
        raise AudioError(
            key,
            f"command {command!r} did not finish within {timeout:g} s and was killed: {tail}",
            hint=f"set ${PIPE_TIMEOUT_ENV} (seconds) to give pipe commands longer",
        )
    if code != 0:
        raise AudioError(key, f"command {command!r} exited with status {code}: {tail}")
    if not out:
        raise AudioError(key, f"command {command!r} wrote no audio to stdout: {tail}")
    return out


def pipe_timeout() -> float:
    """Seconds a pipe command may run: ``$ASRCTL_PIPE_TIMEOUT``, else 300."""
    value = os.environ.get(PIPE_TIMEOUT_ENV, "").strip()
    if not value:
        return PIPE_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds > 0):
        raise OptionsError(
            f"${PIPE_TIMEOUT_ENV} must be a positive number of seconds, not {value!r}"
        )
    return seconds


def _run(command: str, timeout: float) -> tuple[int | None, bytes, bytes]:
    """Run a shell command: (exit status, stdout, stderr); status None when it ran past
    ``timeout`` and its whole process group was killed (a shell's children too)."""
    try:
        proc = subprocess.Popen(
            command,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        return 127, b"", str(exc).encode()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return None, out, err
    except BaseException:  # Ctrl-C while waiting: leave no command running
        _kill_group(proc)
        proc.wait()
        raise
    return proc.returncode, out, err


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


_run_cached = functools.lru_cache(maxsize=PIPE_CACHE_SIZE)(_run)


def _read_ark(spec: str, key: str) -> tuple[int, np.ndarray]:
    """Read a Kaldi wav ark entry as (rate, samples)."""
    import kaldiio

    try:
        value = kaldiio.load_mat(spec)
    except FileNotFoundError as exc:
        raise AudioError(key, f"file not found: {exc.filename}") from exc
    except Exception as exc:  # kaldiio raises bare assertions and format errors
        raise AudioError(key, f"cannot read ark entry {spec}: {exc or type(exc).__name__}") from exc
    if isinstance(value, tuple):
        return int(value[0]), np.asarray(value[1])
    shape = getattr(value, "shape", "?")
    raise AudioError(key, f"{spec} holds a matrix of shape {shape}: feature arks are not audio")


def _add(items: dict[str, AudioItem], item: AudioItem, where: str) -> None:
    if item.key in items:
        raise InputError(f"{where}: duplicate key {item.key!r}", hint="keys must be unique")
    items[item.key] = item


def _path_key(rel: Path) -> str:
    return re.sub(r"\s", "_", rel.with_suffix("").as_posix().replace("/", "__"))


def _lines(path: Path, *, allow_empty: bool = False) -> list[tuple[int, str]]:
    """Return the non-blank lines of a list file, stripped, with 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text list (wav.scp, segments or jsonl)") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    # Split on newlines only: str.splitlines() would also split on U+2028/U+0085, which JSON
    # manifests may carry raw inside transcripts.
    rows = text.replace("\r\n", "\n").split("\n")
    lines = [(n, line.strip()) for n, line in enumerate(rows, 1) if line.strip()]
    if not lines and not allow_empty:
        raise InputError(f"{path}: the list is empty")
    return lines


def _is_binary(path: Path) -> bool:
    """Whether a file holds NUL bytes early on: audio, not a text list."""
    try:
        with path.open("rb") as handle:
            return b"\0" in handle.read(SNIFF_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


def _seconds(text: str, where: str, allow_minus_one: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if allow_minus_one and value == -1:
        return value
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{where}: expected a time in seconds >= 0, got {text!r}")
    return value


def _field(record: dict, names: tuple[str, ...], where: str) -> float | None:
    name = next((n for n in names if record.get(n) is not None), None)
    if name is None:
        return None
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{where}: {name!r} must be a number of seconds, got {value!r}")
    return _seconds(str(value), where)


def checked_end(start: float, end: float | None, where: str) -> float | None:
    if end is None or end == -1:
        return None
    if end <= start:
        raise InputError(f"{where}: end ({end}) must be after start ({start})")
    return end
