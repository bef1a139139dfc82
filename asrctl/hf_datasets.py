"""Local Hugging Face ``datasets`` folders as inputs (what ``save_to_disk`` writes).

A folder holding ``dataset_dict.json`` (a ``DatasetDict``: every split, each a sub-folder)
or ``state.json`` with ``dataset_info.json`` (one ``Dataset``) is read with
``datasets.load_from_disk``: memory-mapped, nothing fetched from the hub, and the package
is imported only when such a folder is given (``pip install 'asrctl[hf]'``).

One item per row. The columns used:

* audio: the column of type ``Audio`` (else one named ``audio``): embedded bytes, or a
  path (relative: against the dataset folder); or a ``{"array", "sampling_rate"}`` struct.
  Audio is never decoded by ``datasets`` (its decoder needs torchcodec): asrctl's own
  loader reads the bytes, so a row is read only when its item is loaded;
* key: the first of ``key``, ``utt``, ``id`` present, else the row number (zero-padded);
  in a ``DatasetDict`` prefixed by the split: ``train__0001``;
* reference text: the first of ``text``, ``sentence``, ``transcription``, ``transcript``;
* optional ``offset``/``start``, ``end``, ``duration`` (seconds) cut a row's audio as in a
  manifest; a ``duration`` column also spares reading the audio to learn its length.

An item's source is ``"<split folder>#<row>"`` (kind ``dataset``): a few bytes per row
however large the audio, so item lists of whole corpora stay small, also when they are
sent to Ray workers (which must see the same folder).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asrctl.errors import AudioError, InputError

if TYPE_CHECKING:
    import numpy as np

    from asrctl.inputs import AudioItem

DICT_FILE = "dataset_dict.json"
STATE_FILE = "state.json"
INFO_FILE = "dataset_info.json"
KEY_COLUMNS = ("key", "utt", "id")
TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript")
START_COLUMNS = ("offset", "start")
OPEN_DATASETS = 8  # memory-mapped datasets kept open per process


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds a ``save_to_disk`` output (a Dataset or a DatasetDict)."""
    return (folder / DICT_FILE).is_file() or (
        (folder / STATE_FILE).is_file() and (folder / INFO_FILE).is_file()
    )


def items_from_dataset(folder: Path) -> list[AudioItem]:
    """One item per row of every split (see the module docstring)."""
    if not (folder / DICT_FILE).is_file():
        return _split_items(folder, prefix="")
    try:
        splits = json.loads((folder / DICT_FILE).read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{folder / DICT_FILE}: not a datasets split list ({e})") from None
    return [item for split in splits for item in _split_items(folder / split, prefix=split)]


def _split_items(folder: Path, prefix: str) -> list[AudioItem]:
    from asrctl.inputs import AudioItem, checked_end

    dataset, _ = _open(str(folder.resolve()))  # also checks there is an audio column
    table = dataset.data
    n = table.num_rows
    keys = _keys(table, folder, n)
    if prefix:
        keys = [f"{prefix}__{k}" for k in keys]
    texts = _column(table, TEXT_COLUMNS) or [None] * n
    starts = _column(table, START_COLUMNS) or [None] * n
    ends = _column(table, ("end",)) or [None] * n
    lengths = _column(table, ("duration",)) or [None] * n
    base = str(folder.resolve())
    items = []
    for row in range(n):
        where = f"{folder} row {row}"
        start = _seconds(starts[row], where) or 0.0
        end = _seconds(ends[row], where)
        length = _seconds(lengths[row], where)
        if end is None and length is not None:
            end = start + length
        text = texts[row]
        if text is not None and not isinstance(text, str):
            raise InputError(f"{where}: the reference text must be a string, got {text!r}")
        end = checked_end(start, end, where)
        items.append(AudioItem(keys[row], f"{base}#{row}", "dataset", start, end, text=text))
    return items


def _keys(table: Any, folder: Path, n: int) -> list[str]:
    values = _column(table, KEY_COLUMNS)
    if values is None:
        width = max(4, len(str(n - 1)))
        return [f"{i:0{width}d}" for i in range(n)]
    keys = [str(v) for v in values]
    for row, key in enumerate(keys):
        if not key or any(c.isspace() for c in key):
            raise InputError(f"{folder} row {row}: key {key!r} is empty or contains whitespace")
    return keys


def _column(table: Any, names: tuple[str, ...]) -> list | None:
    name = next((n for n in names if n in table.column_names), None)
    return None if name is None else table.column(name).to_pylist()


def _seconds(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{where}: times must be numbers of seconds, got {value!r}")
    if value < 0:
        raise InputError(f"{where}: times must be >= 0, got {value!r}")
    return float(value)


@functools.lru_cache(maxsize=OPEN_DATASETS)
def _open(folder: str) -> tuple[Any, str]:
    """The dataset at ``folder`` (memory-mapped) and its audio column."""
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"{folder} is a Hugging Face datasets folder; reading it needs the datasets package",
            hint="pip install 'asrctl[hf]'",
        ) from None
    try:
        dataset = datasets.load_from_disk(folder)
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, arrow errors
        raise InputError(f"{folder}: cannot load the saved dataset: {e}") from None
    if not isinstance(dataset, datasets.Dataset):
        raise InputError(f"{folder}: expected one split (a Dataset), got {type(dataset).__name__}")
    return dataset, _audio_column(dataset, folder)


def _audio_column(dataset: Any, folder: str) -> str:
    from datasets import Audio

    typed = [name for name, f in dataset.features.items() if isinstance(f, Audio)]
    if typed:
        return typed[0]
    if "audio" in dataset.column_names:
        return "audio"
    raise InputError(
        f"{folder}: no audio column (a column of type Audio, or one named 'audio'); "
        f"columns: {', '.join(dataset.column_names)}"
    )


def read_row(source: str, key: str) -> tuple[bytes | str | np.ndarray, int | None]:
    """The audio of one row, as ``asrctl.audio.load_audio`` takes it: (source, rate of an
    array or None). Raises AudioError naming ``key``."""
    import numpy as np

    folder, _, row = source.rpartition("#")
    try:
        dataset, column = _open(folder)
    except InputError as e:
        raise AudioError(key, str(e)) from None
    value = dataset.data.column(column)[int(row)].as_py()
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise AudioError(key, f"{source}: unexpected audio value of type {type(value).__name__}")
    if value.get("bytes"):
        return value["bytes"], None
    if value.get("array") is not None:
        rate = value.get("sampling_rate")
        if not isinstance(rate, int) or rate <= 0:
            raise AudioError(key, f"{source}: an audio array needs a positive sampling_rate")
        return np.asarray(value["array"], dtype=np.float32), rate
    if value.get("path"):
        path = Path(value["path"]).expanduser()
        return str(path if path.is_absolute() else Path(folder) / path), None
    raise AudioError(key, f"{source}: the row has no audio (no bytes, path or array)")
