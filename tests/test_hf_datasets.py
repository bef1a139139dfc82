"""Tests for asrctl.hf_datasets: saved Hugging Face datasets folders as inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from asrctl.errors import AudioError, InputError
from asrctl.hf_datasets import _open
from asrctl.inputs import iter_inputs
from tests.test_inputs import SR, wav

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _fresh_cache():
    _open.cache_clear()  # each test writes its own folders
    yield
    _open.cache_clear()


def audio_dataset(tmp_path: Path, seconds=(1.0, 0.5), **columns) -> datasets.Dataset:
    paths = [str(wav(tmp_path / "src" / f"{i}.wav", s)) for i, s in enumerate(seconds)]
    ds = datasets.Dataset.from_dict({"audio": paths, **columns})
    return ds.cast_column("audio", datasets.Audio())


def test_dataset_with_embedded_audio(tmp_path: Path) -> None:
    ds = audio_dataset(tmp_path, id=["u1", "u2"], text=["one", "two"])
    ds.save_to_disk(str(tmp_path / "saved"))
    for f in (tmp_path / "src").iterdir():
        f.unlink()  # save_to_disk embedded the bytes: the sources are no longer needed
    items = iter_inputs(tmp_path / "saved")
    assert [(i.key, i.kind, i.text) for i in items] == [
        ("u1", "dataset", "one"),
        ("u2", "dataset", "two"),
    ]
    assert [len(i.load(SR)) for i in items] == [SR, SR // 2]
    assert [i.duration() for i in items] == pytest.approx([1.0, 0.5])


def test_dataset_dict_keys_by_split_and_row(tmp_path: Path) -> None:
    ds = audio_dataset(tmp_path)
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(tmp_path / "dd")
    items = iter_inputs(tmp_path / "dd")
    assert [i.key for i in items] == ["train__0000", "train__0001", "test__0000"]
    assert len(items[2].load(SR)) == SR // 2
    assert [i.key for i in iter_inputs(tmp_path / "dd" / "test")] == ["0000"]  # one split


def test_array_rows_and_duration_columns(tmp_path: Path) -> None:
    tone = np.sin(np.arange(8000) / 8.0).astype(np.float32)
    ds = datasets.Dataset.from_dict(
        {
            "audio": [{"array": tone, "sampling_rate": 8000}] * 2,
            "key": ["a", "b"],
            "offset": [0.0, 0.25],
            "duration": [None, 0.5],
        }
    )
    ds.save_to_disk(tmp_path / "arrays")
    a, b = iter_inputs(tmp_path / "arrays")
    assert (a.end, b.start, b.end) == (None, 0.25, 0.75)
    assert len(a.load(SR)) == SR  # 1 s at 8 kHz resampled
    assert len(b.load(SR)) == SR // 2
    assert a.duration() == pytest.approx(1.0) and b.duration() == pytest.approx(0.5)


def test_path_column_relative_to_the_dataset(tmp_path: Path) -> None:
    wav(tmp_path / "saved" / "clips" / "x.wav", 0.25)
    datasets.Dataset.from_dict({"audio": ["clips/x.wav", "clips/gone.wav"]}).save_to_disk(
        tmp_path / "saved"
    )
    x, gone = iter_inputs(tmp_path / "saved")
    assert len(x.load(SR)) == SR // 4
    with pytest.raises(AudioError, match=r"^0001: file not found"):
        gone.load(SR)


def test_errors_name_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets.Dataset.from_dict({"speech": ["x.wav"]}).save_to_disk(tmp_path / "noaudio")
    with pytest.raises(InputError, match=r"noaudio: no audio column .*columns: speech"):
        iter_inputs(tmp_path / "noaudio")
    datasets.Dataset.from_dict({"audio": ["x.wav"], "id": ["a b"]}).save_to_disk(tmp_path / "k")
    with pytest.raises(InputError, match=r"k row 0: key 'a b' is empty or contains whitespace"):
        iter_inputs(tmp_path / "k")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    _open.cache_clear()
    with pytest.raises(InputError, match=r"k is a Hugging Face datasets folder") as e:
        iter_inputs(tmp_path / "k")
    assert "asrctl[hf]" in (e.value.hint or "")
