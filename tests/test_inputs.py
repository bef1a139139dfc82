"""Tests for asrctl.inputs: wav.scp (paths, pipes, arks), Kaldi dirs, folders, manifests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf

from asrctl.errors import AudioError, InputError, OptionsError
from asrctl.inputs import AudioItem, from_arrays, iter_inputs

SR = 16000  # Hz


def wav(path: Path, seconds: float = 1.0, rate: int = SR) -> Path:
    """Write a PCM-16 440 Hz tone of ``seconds`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate, subtype="PCM_16")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def by_key(items: list[AudioItem]) -> dict[str, AudioItem]:
    return {item.key: item for item in items}


def test_single_file(tmp_path: Path) -> None:
    [item] = iter_inputs(wav(tmp_path / "my talk.wav"))
    assert (item.key, item.kind) == ("my_talk", "path")
    assert item.load(SR).shape == (SR,) and item.duration() == pytest.approx(1.0)


def test_missing_spec(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such file or directory"):
        iter_inputs(tmp_path / "nope.scp")


def test_wav_scp_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav(tmp_path / "data" / "abs.wav")
    wav(tmp_path / "cwd" / "rel.wav", 0.5)
    wav(tmp_path / "data" / "beside.wav", 0.25)
    scp = write(
        tmp_path / "data" / "wav.scp",
        f"a {tmp_path / 'data' / 'abs.wav'}\nb rel.wav\n\nc beside.wav\nd gone.wav\n",
    )
    monkeypatch.chdir(tmp_path / "cwd")
    items = by_key(iter_inputs(str(scp)))
    assert list(items) == ["a", "b", "c", "d"]
    assert items["b"].source == str(tmp_path / "cwd" / "rel.wav")  # cwd first (Kaldi)
    assert items["c"].source == str(tmp_path / "data" / "beside.wav")  # then the scp's folder
    assert [len(items[k].load(SR)) for k in "abc"] == [SR, SR // 2, SR // 4]
    with pytest.raises(AudioError, match=r"^d: file not found"):  # not an InputError
        items["d"].load(SR)


def test_wav_scp_pipes(tmp_path: Path) -> None:
    wav(tmp_path / "x.wav", 0.5, 8000)
    scp = write(
        tmp_path / "list.scp",
        "\n".join(
            [
                f"ok cat {tmp_path / 'x.wav'} |",
                "fails false |",
                "loud sh -c 'echo sox: boom >&2; exit 3' |",
                "silent true |",
            ]
        ),
    )
    items = by_key(iter_inputs(scp))
    assert items["ok"].kind == "pipe" and items["ok"].duration() is None
    assert len(items["ok"].load(SR)) == SR // 2
    with pytest.raises(AudioError, match=r"^fails: command 'false' exited with status 1"):
        items["fails"].load(SR)
    with pytest.raises(AudioError, match=r"^loud: .*status 3: sox: boom"):
        items["loud"].load(SR)
    with pytest.raises(AudioError, match=r"^silent: .*wrote no audio"):
        items["silent"].load(SR)


def test_wav_scp_arks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "out")
    tone = (3000 * np.sin(np.arange(8000) / 5)).astype(np.int16)
    with kaldiio.WriteHelper("ark,scp:a.ark,wav.scp") as writer:
        writer("u1", (8000, tone))
        writer("feats", np.zeros((5, 80), dtype=np.float32))
    assert "u1 a.ark:" in (tmp_path / "out" / "wav.scp").read_text()  # relative to the cwd
    monkeypatch.chdir(tmp_path)  # now only found beside the wav.scp
    items = by_key(iter_inputs("out/wav.scp"))
    assert items["u1"].kind == "ark" and items["u1"].source.startswith(str(tmp_path / "out"))
    y = items["u1"].load(SR)
    assert len(y) == SR and abs(np.abs(y).max() - 3000 / 32768) < 0.01
    with pytest.raises(AudioError, match=r"^feats: .*feature arks are not audio"):
        items["feats"].load(SR)
    missing = iter_inputs(write(tmp_path / "m.scp", "m missing.ark:12\n"))[0]
    with pytest.raises(AudioError, match=r"^m: file not found"):
        missing.load(SR)


def kaldi_dir(root: Path) -> Path:
    wav(root / "rec1.wav", 3.0)
    wav(root / "rec2.wav", 2.0)
    write(root / "data" / "wav.scp", f"r1 {root / 'rec1.wav'}\nr2 {root / 'rec2.wav'}\n")
    write(root / "data" / "segments", "s1 r1 0.0 1.0\ns2 r1 1.5 2.75\ns3 r2 0.5 -1\n")
    write(root / "data" / "text", "s1 hello world\ns3 bye\n")
    return root / "data"


def test_kaldi_data_dir_with_segments(tmp_path: Path) -> None:
    items = iter_inputs(kaldi_dir(tmp_path))
    assert [i.key for i in items] == ["s1", "s2", "s3"]
    assert [len(i.load(SR)) for i in items] == [SR, round(1.25 * SR), round(1.5 * SR)]
    assert [i.duration() for i in items] == pytest.approx([1.0, 1.25, 1.5])
    assert [i.text for i in items] == ["hello world", None, "bye"]
    full = sf.read(tmp_path / "rec1.wav", dtype="float32")[0]
    np.testing.assert_allclose(items[1].load(SR), full[24000:44000], atol=1e-6)
    assert [i.key for i in iter_inputs(tmp_path / "data" / "segments")] == ["s1", "s2", "s3"]


def test_kaldi_dir_without_segments(tmp_path: Path) -> None:
    data = kaldi_dir(tmp_path)
    (data / "segments").unlink()
    assert [i.key for i in iter_inputs(data)] == ["r1", "r2"]


def test_segments_of_a_pipe_run_it_once(tmp_path: Path) -> None:
    wav(tmp_path / "rec.wav", 2.0)
    counter = tmp_path / "runs"
    write(tmp_path / "d" / "wav.scp", f"r sh -c 'echo x >> {counter}; cat {tmp_path}/rec.wav' |\n")
    write(tmp_path / "d" / "segments", "a r 0 1\nb r 1 2\n")
    assert [len(i.load(SR)) for i in iter_inputs(tmp_path / "d")] == [SR, SR]
    assert counter.read_text() == "x\n"


def test_segments_errors(tmp_path: Path) -> None:
    seg = write(tmp_path / "alone" / "segments", "s1 r1 0 1\n")
    with pytest.raises(InputError, match=r"needs a wav.scp"):
        iter_inputs(seg)
    data = kaldi_dir(tmp_path)
    for body, message in [
        ("s1 r1 0 1\ns2 r9 0 1\n", "segments:2: recording 'r9' is not in"),
        ("s1 r1 0\n", "segments:1: expected 'UTTERANCE RECORDING START END'"),
        ("s1 r1 zero 1\n", "segments:1: expected a time in seconds"),
        ("s1 r1 2 1\n", "segments:1: end .* must be after start"),
        ("s1 r1 0 1\ns1 r2 0 1\n", "segments:2: duplicate key 's1'"),
    ]:
        write(data / "segments", body)
        with pytest.raises(InputError, match=message):
            iter_inputs(data)


def test_folder_recursion_and_keys(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    wav(root / "a" / "x.wav")
    (root / "a" / "b").mkdir()
    sf.write(root / "a" / "b" / "y.flac", np.full(800, 0.1), SR)
    sf.write(root / "z z.ogg", np.zeros(SR), SR)
    wav(root / ".cache" / "hidden.wav")
    write(root / "notes.txt", "not audio")
    items = iter_inputs(root)
    assert [i.key for i in items] == ["a__b__y", "a__x", "z_z"]
    assert items[0].source == str(root / "a" / "b" / "y.flac")
    assert len(items[0].load(8000)) == 400


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no audio files"):
        iter_inputs(tmp_path / "empty")
    wav(tmp_path / "clash" / "x.wav")
    sf.write(tmp_path / "clash" / "x.flac", np.zeros(100), SR)
    with pytest.raises(InputError, match=r"both get key 'x'"):
        iter_inputs(tmp_path / "clash")


def test_jsonl_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav(tmp_path / "m" / "audio" / "one.wav", 2.0)
    records = [
        {"key": "k1", "audio": "audio/one.wav", "text": "hi"},
        {"utt": "k2", "audio_filepath": "audio/one.wav", "offset": 0.5, "duration": 1.0},
        {"id": 3, "wav": str(tmp_path / "m" / "audio" / "one.wav"), "start": 1.0, "end": 1.25},
        {"path": "audio/one.wav"},
        {"key": "k5", "audio": "audio/missing.wav"},
    ]
    manifest = write(tmp_path / "m" / "list.txt", "\n".join(json.dumps(r) for r in records))
    monkeypatch.chdir(tmp_path)  # relative paths follow the manifest, not the cwd
    items = iter_inputs(manifest)  # a .txt whose first line is '{' is a manifest
    assert [i.key for i in items] == ["k1", "k2", "3", "one", "k5"]
    assert items[0].text == "hi" and items[0].source == str(tmp_path / "m" / "audio" / "one.wav")
    assert [len(i.load(SR)) for i in items[:4]] == [2 * SR, SR, SR // 4, 2 * SR]
    assert [i.duration() for i in items[:4]] == pytest.approx([2.0, 1.0, 0.25, 2.0])
    with pytest.raises(AudioError, match=r"^k5: file not found"):
        items[4].load(SR)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"key": "a", "audio": "x.wav"}\n{"key": "b", "audio": \n', r"m\.jsonl:2: not valid JSON"),
        ('{"key": "a", "audio": "x.wav"}\n["x.wav"]\n', r"m\.jsonl:2: expected a JSON object"),
        ('{"key": "a", "file": "x.wav"}\n', r"m\.jsonl:1: expected an audio path in one of audio"),
        ('{"key": "a b", "audio": "x.wav"}\n', r"m\.jsonl:1: key 'a b' is empty or contains"),
        (
            '{"key": "a", "audio": "x.wav", "start": "1s"}\n',
            r"m\.jsonl:1: 'start' must be a number",
        ),
        (
            '{"key": "a", "audio": "x.wav", "start": 2, "end": 1}\n',
            r"m\.jsonl:1: end .* after start",
        ),
        ('{"key": "a", "audio": "x.wav"}\n{"key": "a", "audio": "y.wav"}\n', "duplicate key 'a'"),
    ],
)
def test_jsonl_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        iter_inputs(write(tmp_path / "m.jsonl", body))


def test_scp_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"wav\.scp:2: expected 'KEY AUDIO'"):
        iter_inputs(write(tmp_path / "wav.scp", "a x.wav\nlonely\n"))
    with pytest.raises(InputError, match=r"wav\.scp:3: duplicate key 'a'"):
        iter_inputs(write(tmp_path / "wav.scp", "a x.wav\nb y.wav\na z.wav\n"))
    with pytest.raises(InputError, match=r"the list is empty"):
        iter_inputs(write(tmp_path / "empty.scp", "\n  \n"))


def test_list_of_specs(tmp_path: Path) -> None:
    one, two = wav(tmp_path / "one.wav"), wav(tmp_path / "sub" / "two.wav")
    scp = write(tmp_path / "extra.scp", f"three {one}\n")
    items = iter_inputs([one, str(tmp_path / "sub"), scp])
    assert [i.key for i in items] == ["one", "two", "three"]
    with pytest.raises(InputError, match=r"duplicate key 'two'"):
        iter_inputs([two, tmp_path / "sub"])


def test_from_arrays() -> None:
    named = from_arrays({"a": np.zeros(8000, np.float32), "b": np.ones(4000, np.int16)}, 8000)
    assert [(i.key, i.kind, i.duration()) for i in named] == [
        ("a", "array", 1),
        ("b", "array", 0.5),
    ]
    assert named[0].load(SR).shape == (SR,) and named[1].load(8000).max() == pytest.approx(2**-15)
    listed = from_arrays([np.zeros(10)] * 3, SR)
    assert [i.key for i in listed] == ["0000", "0001", "0002"]
    with pytest.raises(InputError, match=r"expected a numpy array"):
        from_arrays([[0.0, 1.0]], SR)  # type: ignore[list-item]
    with pytest.raises(AudioError, match=r"^e: empty"):
        from_arrays({"e": np.zeros(0)}, SR)[0].load(SR)


def test_binary_file_with_odd_extension_is_audio(tmp_path: Path) -> None:
    (tmp_path / "take.bin").write_bytes(wav(tmp_path / "x.wav").read_bytes())
    [item] = iter_inputs(tmp_path / "take.bin")
    assert item.key == "take" and len(item.load(SR)) == SR


def test_bad_specs() -> None:
    with pytest.raises(InputError, match=r"empty string"):
        iter_inputs([""])
    with pytest.raises(ValueError, match=r"kind must be one of"):
        AudioItem("k", "x.wav", "url")


def test_nemo_manifest(tmp_path: Path) -> None:
    """NeMo's fields; keyless lines cutting one file get start/end keys, others the name."""
    wav(tmp_path / "audio" / "long.wav", 3.0)
    wav(tmp_path / "audio" / "short.flac", 0.5)
    records = [
        {"audio_filepath": "audio/long.wav", "offset": 0.0, "duration": 1.5, "text": "a"},
        {"audio_filepath": "audio/long.wav", "offset": 1.5, "duration": 1.25, "text": "b"},
        {"audio_filepath": "audio/short.flac", "offset": None, "duration": 0.5, "text": "c"},
    ]
    manifest = write(tmp_path / "train_manifest.json", "\n".join(json.dumps(r) for r in records))
    items = iter_inputs(manifest)  # NeMo's .json extension: told by its first character
    assert [i.key for i in items] == ["long-0000000-0000150", "long-0000150-0000275", "short"]
    assert [i.text for i in items] == ["a", "b", "c"]
    assert [len(i.load(SR)) for i in items] == [SR * 3 // 2, SR * 5 // 4, SR // 2]
    assert [i.duration() for i in items] == pytest.approx([1.5, 1.25, 0.5])
    same_cut = write(tmp_path / "twice.jsonl", "\n".join(json.dumps(records[0]) for _ in "ab"))
    with pytest.raises(InputError, match=r"twice\.jsonl:2: duplicate key 'long-0000000-0000150'"):
        iter_inputs(same_cut)


def test_wav_scp_pipe_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 18 #13: `sleep 45 |` held up a whole batch; a pipe now has a time limit and
    its whole process group (the shell's children too) is killed."""
    wav(tmp_path / "x.wav", 0.5, 8000)
    marker = tmp_path / "still-running"
    scp = write(
        tmp_path / "list.scp",
        f"slow sh -c 'sleep 30; touch {marker}' |\nok cat {tmp_path / 'x.wav'} |\n",
    )
    monkeypatch.setenv("ASRCTL_PIPE_TIMEOUT", "0.5")
    items = by_key(iter_inputs(scp))
    start = time.monotonic()
    with pytest.raises(AudioError, match=r"^slow: command .* did not finish within 0.5 s") as e:
        items["slow"].load(SR)
    assert time.monotonic() - start < 5
    assert e.value.hint and "ASRCTL_PIPE_TIMEOUT" in e.value.hint
    assert len(items["ok"].load(SR)) == SR // 2
    monkeypatch.setenv("ASRCTL_PIPE_TIMEOUT", "soon")
    with pytest.raises(OptionsError, match="ASRCTL_PIPE_TIMEOUT must be a positive number"):
        items["ok"].load(SR)
