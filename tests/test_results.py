"""The output folder: results.jsonl, Kaldi text, failed.jsonl, and resuming a killed run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asrctl.errors import AsrctlError, OptionsError
from asrctl.results import Failure, Recovery, ResultsDir, Transcript

A = Transcript("a", "hello world", 1.5, token_ids=(5, 6, 7), finish_reason="stop")
B = Transcript("b", "你好，世界", 2.0, timing={"encode": 0.25})
C = Transcript("c", "third", 0.5)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_bytes().splitlines()]


def _text_keys(out: Path) -> list[str]:
    lines = (out / "text").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    return [line.split(" ", 1)[0] for line in lines[:-1]]


def _write(out: Path, *results: Transcript | Failure, resume: bool = False) -> set[str]:
    with ResultsDir(out, resume=resume) as rd:
        done = set(rd.done)
        rd.write(list(results))
    return done


def test_writes_text_and_results(tmp_path: Path) -> None:
    _write(tmp_path, A, B)
    assert (tmp_path / "text").read_text(encoding="utf-8") == "a hello world\nb 你好，世界\n"
    assert "你好" in (tmp_path / "results.jsonl").read_text(encoding="utf-8")  # not \\u escaped
    rows = _rows(tmp_path)
    assert [r["key"] for r in rows] == ["a", "b"]
    assert rows[0] == {
        "key": "a",
        "text": "hello world",
        "duration": 1.5,
        "finish_reason": "stop",
        "timing": {},
        "num_tokens": 3,
    }
    assert rows[1]["timing"] == {"encode": 0.25} and rows[1]["num_tokens"] == 0


def test_results_flushed_per_batch(tmp_path: Path) -> None:
    with ResultsDir(tmp_path) as rd:
        rd.write([A])
        assert _rows(tmp_path)[0]["key"] == "a"  # on disk before close
        assert _text_keys(tmp_path) == ["a"]
        assert rd.done == {"a"}


def test_refuses_existing_results_without_resume(tmp_path: Path) -> None:
    _write(tmp_path, A)
    with pytest.raises(AsrctlError) as info:
        ResultsDir(tmp_path)
    assert "results.jsonl" in str(info.value)
    assert info.value.hint and "--resume" in info.value.hint
    assert [r["key"] for r in _rows(tmp_path)] == ["a"]  # untouched


def test_empty_results_file_is_not_existing_results(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text("")
    assert _write(tmp_path, A) == set()
    assert _text_keys(tmp_path) == ["a"]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b'{"key": "c", "te', id="half-line"),
        pytest.param(json.dumps(C.to_json()).encode(), id="no-newline"),
        pytest.param('{"key": "c", "text": "你'.encode()[:-1], id="torn-utf8"),
        pytest.param(b"\x00\x00\x00\n", id="garbage"),
    ],
)
def test_resume_drops_torn_last_line(tmp_path: Path, tail: bytes) -> None:
    _write(tmp_path, A, B)
    complete = (tmp_path / "results.jsonl").read_bytes()
    with (tmp_path / "results.jsonl").open("ab") as f:
        f.write(tail)
    (tmp_path / "text").write_text("a hello world\nb 你好\nc half\n", encoding="utf-8")  # stale
    with ResultsDir(tmp_path, resume=True) as rd:
        assert rd.done == {"a", "b"}
        assert (tmp_path / "results.jsonl").read_bytes() == complete
        assert (tmp_path / "text").read_text(encoding="utf-8") == "a hello world\nb 你好，世界\n"
        rd.write([C])
    assert [r["key"] for r in _rows(tmp_path)] == ["a", "b", "c"]
    assert _text_keys(tmp_path) == ["a", "b", "c"]


def test_resume_keeps_line_separators_inside_transcripts(tmp_path: Path) -> None:
    """U+2028 and U+0085 stay raw in the JSON (ensure_ascii=False): they are not line ends."""
    odd = Transcript("odd", "one\u2028two\x85three", 1.0)
    _write(tmp_path, A, odd, B)
    assert _write(tmp_path, C, resume=True) == {"a", "odd", "b"}
    assert [r["key"] for r in _rows(tmp_path)] == ["a", "odd", "b", "c"]
    assert _rows(tmp_path)[1]["text"] == odd.text
    assert (tmp_path / "text").read_text(encoding="utf-8").splitlines()[1] == "odd one two three"


def test_failures_go_to_failed_jsonl(tmp_path: Path) -> None:
    with ResultsDir(tmp_path) as rd:
        rd.write([Failure("x", "x.wav: not audio"), A])
        assert rd.n_failed == 1
        assert rd.done == {"a"}
    failed = [json.loads(x) for x in (tmp_path / "failed.jsonl").read_text().splitlines()]
    assert failed == [{"key": "x", "error": "x.wav: not audio"}]
    assert _text_keys(tmp_path) == ["a"] and [r["key"] for r in _rows(tmp_path)] == ["a"]
    # A resumed run retries failed inputs: they are not done, and failed.jsonl starts afresh.
    assert _write(tmp_path, resume=True) == {"a"}
    assert (tmp_path / "failed.jsonl").read_text() == ""


@pytest.mark.parametrize(
    ("transcript", "line"),
    [
        ("plain text", "k plain text"),
        ("  leading and trailing  ", "k leading and trailing"),
        ("two\nlines\r\nand\ttabs", "k two lines and tabs"),
        ("中文\u3000全角空格", "k 中文 全角空格"),
        ("para\u2028sep", "k para sep"),
    ],
)
def test_kaldi_text_is_one_line(tmp_path: Path, transcript: str, line: str) -> None:
    _write(tmp_path, Transcript("k", transcript, 1.0))
    assert (tmp_path / "text").read_text(encoding="utf-8") == line + "\n"
    assert _rows(tmp_path)[0]["text"] == transcript  # results.jsonl keeps the raw transcript


def test_resume_keeps_valid_rows_after_a_garbage_line(tmp_path: Path) -> None:
    """issue 18 #9: a garbage line mid-file silently dropped every later valid row."""
    _write(tmp_path, A)
    rows = (tmp_path / "results.jsonl").read_bytes()
    garbage = [
        b"\x00garbage\n",
        b"[]\n",
        b'{"key": 3, "text": "x"}\n',
        b'{"key": "a", "text": "again"}\n',
    ]
    later = json.dumps(B.to_json(), ensure_ascii=False).encode() + b"\n"
    (tmp_path / "results.jsonl").write_bytes(rows + b"".join(garbage) + later)
    with ResultsDir(tmp_path, resume=True) as rd:
        assert rd.done == {"a", "b"}
        assert rd.recovery is not None
        assert rd.recovery.kept == 2 and rd.recovery.rejected == (2, 3, 4, 5)
        assert not rd.recovery.torn
        rd.write([C])
    assert [r["key"] for r in _rows(tmp_path)] == ["a", "b", "c"]
    assert _text_keys(tmp_path) == ["a", "b", "c"]
    assert (tmp_path / "results.rejected").read_bytes() == b"".join(garbage)  # nothing lost


@pytest.mark.parametrize("line", [b"[]\n", b"1\n", b'"x"\n', b"null\n", b'{"text": "t"}\n'])
def test_resume_survives_json_that_is_not_a_result(tmp_path: Path, line: bytes) -> None:
    """issue 18 #9: a line like `[]` crashed resume with a traceback."""
    (tmp_path / "results.jsonl").write_bytes(line)
    with ResultsDir(tmp_path, resume=True) as rd:
        assert rd.done == set() and rd.recovery.rejected == (1,)
        rd.write([A])
    assert [r["key"] for r in _rows(tmp_path)] == ["a"]


def test_torn_last_line_is_reported(tmp_path: Path) -> None:
    _write(tmp_path, A)
    with (tmp_path / "results.jsonl").open("ab") as f:
        f.write(b'{"key": "b", "te')
    with ResultsDir(tmp_path, resume=True) as rd:
        assert rd.recovery == Recovery(kept=1, torn=True, rejected=())
    assert not (tmp_path / "results.rejected").exists()


def test_one_run_at_a_time_per_folder(tmp_path: Path) -> None:
    """issue 18 #9: two runs into one -o both wrote every key."""
    with ResultsDir(tmp_path) as first:
        with pytest.raises(OptionsError, match="another asrctl run is writing to"):
            ResultsDir(tmp_path, resume=True)
        first.write([A])
    with ResultsDir(tmp_path, resume=True) as again:  # released on close
        assert again.done == {"a"}


def test_lock_is_held_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from asrctl.results import ResultsDir\n"
        "rd = ResultsDir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"locked\n"
        with pytest.raises(OptionsError, match="another asrctl run"):
            ResultsDir(tmp_path, resume=True)
    finally:
        proc.kill()
        proc.wait()
    ResultsDir(tmp_path, resume=True).close()  # a killed holder leaves no stale lock


def test_lines_split_into_results_however_they_are_read(tmp_path: Path) -> None:
    """U+0085, U+2028 and U+2029 are escaped: str.splitlines() splits on them raw."""
    odd = Transcript("odd", "a\u2028b\x85c\u2029d 你好", 1.0)
    _write(tmp_path, odd, A)
    text = (tmp_path / "results.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["key"] for r in rows] == ["odd", "a"] and rows[0]["text"] == odd.text
    assert "你好" in text
