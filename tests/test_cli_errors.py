"""The CLI's error paths, in-process with stand-ins for the model (no vLLM): literal
output, Ctrl-C, a dead engine, a blank API key (issue 18 #6, #7, #11)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from asrctl.cli import _output
from asrctl.cli.app import main
from asrctl.pipeline import Startup
from asrctl.results import Failure, Transcript

MARKUP_KEY = "k[/x]"
NASTY = f"{MARKUP_KEY}: /data/[live]/a.ark:100: [bold]not audio[/bold] :smile:"


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["asrctl", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


class FakeTranscriber:
    def __init__(self, model, **kwargs) -> None:
        self.model = model
        self.pipeline = SimpleNamespace(startup=Startup(setup_s=0.0, engine_s=0.0, encoder_s=0.0))

    def __enter__(self) -> FakeTranscriber:
        return self

    def __exit__(self, *exc) -> None:
        pass


def fake_long_audio(then: BaseException | None, failure: Failure | None = None):
    """A LongAudio stand-in: one batch with the first input done, then ``then``."""

    class FakeLongAudio:
        def __init__(self, transcriber, vad=None, **kwargs) -> None:
            pass

        def transcribe(self, items, options):
            first = [Transcript(items[0].key, "hello", 1.0)]
            yield first + ([failure] if failure else [])
            if then is not None:
                raise then
            yield [Transcript(i.key, "hello", 1.0) for i in items[1:]]

    return FakeLongAudio


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        sf.write(folder / f"{name}.wav", np.zeros(1600, np.float32), 16000)
    return folder


@pytest.fixture
def stand_ins(monkeypatch):
    import asrctl.segment
    import asrctl.transcribe

    monkeypatch.setattr(asrctl.transcribe, "Transcriber", FakeTranscriber)

    def use(long_audio) -> None:
        monkeypatch.setattr(asrctl.segment, "LongAudio", long_audio)

    return use


def test_output_is_literal(capsys) -> None:
    """issue 18 #6: keys, paths and errors went through rich markup (MarkupError, a
    vanished `[live]`, `:100:` as an emoji)."""
    _output.error(NASTY, hint="see [/x] :100:")
    _output.warn(NASTY)
    _output.info(NASTY)
    _output.ok(NASTY)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"Error: {NASTY}",
        "hint: see [/x] :100:",
        f"warning: {NASTY}",
        NASTY,
        f"ok {NASTY}",
    ]


def test_failure_with_markup_in_its_key_is_printed_not_fatal(
    monkeypatch, capsys, stand_ins, inputs, tmp_path
) -> None:
    stand_ins(fake_long_audio(None, Failure(MARKUP_KEY, NASTY)))
    out = tmp_path / "out"
    code, _, err = run_main(
        monkeypatch, capsys, "transcribe", str(inputs), "-m", str(tmp_path), "-o", str(out)
    )
    assert code == 1, err
    assert f"Error: {NASTY}" in err
    assert "3 transcribed, 1 failed" in err
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == ["a", "b", "c"]  # the run was not lost


def test_ctrl_c_says_how_to_resume_and_resume_finishes(
    monkeypatch, capsys, stand_ins, inputs, tmp_path
) -> None:
    """issue 18 #11: Ctrl-C exited 130 without saying how to continue."""
    out = tmp_path / "out"
    args = ("transcribe", str(inputs), "-m", str(tmp_path), "-o", str(out))
    stand_ins(fake_long_audio(KeyboardInterrupt()))
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 130
    assert "interrupted; rerun with --resume to continue" in err
    assert "Traceback" not in err
    assert (out / "text").read_text() == "a hello\n"  # the finished batch is kept
    stand_ins(fake_long_audio(None))
    code, _, err = run_main(monkeypatch, capsys, *args, "--resume")
    assert code == 0, err
    assert "resuming: 1 of 3 keys already done" in err
    assert (out / "text").read_text() == "a hello\nb hello\nc hello\n"


def test_dead_engine_is_an_engine_error(monkeypatch, capsys, stand_ins, inputs, tmp_path) -> None:
    """issue 18 #11: a killed vLLM worker gave an EngineDeadError traceback and exit 1."""
    from vllm.v1.engine.exceptions import EngineDeadError

    stand_ins(fake_long_audio(EngineDeadError()))
    out = tmp_path / "out"
    code, _, err = run_main(
        monkeypatch, capsys, "transcribe", str(inputs), "-m", str(tmp_path), "-o", str(out)
    )
    assert code == 5
    assert "engine: the vLLM engine process died" in err and "--resume" in err
    assert "Traceback" not in err
    assert (out / "text").read_text() == "a hello\n"


def test_resume_reports_rejected_lines(monkeypatch, capsys, stand_ins, inputs, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    row = json.dumps(Transcript("a", "hello", 1.0).to_json())
    (out / "results.jsonl").write_text(f"[]\n{row}\n")
    stand_ins(fake_long_audio(None))
    code, _, err = run_main(
        monkeypatch, capsys, "transcribe", str(inputs), "-m", str(tmp_path), "-o", str(out),
        "--resume",
    )  # fmt: skip
    assert code == 0, err
    assert "1 line(s) are not results" in err and "line 1" in err
    assert "results.rejected" in err and "resuming: 1 of 3 keys already done" in err


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "is set but empty"), ("   ", "is set but empty"), ("a b", "must not contain whitespace")],
)
def test_blank_or_spaced_api_key_env_is_refused(
    monkeypatch, capsys, tmp_path, value: str, message: str
) -> None:
    """issue 18 #7: ASRCTL_API_KEY="" served without authentication; "a b" became two keys."""
    monkeypatch.setenv("ASRCTL_API_KEY", value)
    code, _, err = run_main(monkeypatch, capsys, "serve", "-m", str(tmp_path))
    assert code == 2
    assert message in err


def test_api_key_env_is_one_key(monkeypatch) -> None:
    from asrctl.cli.serve import api_keys

    monkeypatch.setenv("ASRCTL_API_KEY", "sk-one")
    assert api_keys(None) == ("sk-one",)
    assert api_keys(["sk-flag"]) == ("sk-flag",)  # the flag wins
    monkeypatch.delenv("ASRCTL_API_KEY")
    assert api_keys(None) == ()
