"""``asrctl bench`` end to end on the tiny fixture: one subprocess on the fake engine
(asrctl.testing; bench's timing and scoring do not depend on what the engine is).

The fake transcribes noise into English words, so the checks are structural: every field of
bench.json, counts that add up, the score equal to jiwer's on the same normalised strings,
missing keys reported, the chart written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from clirun import ENGINE_FLAGS

from asrctl.bench.scoring import tokens
from asrctl.engine import FAKE_ENGINE_ENV

REFS = {  # u3 has no reference; zz_extra has no audio
    "u0": "今天天气很好。",
    "u1": "我用Python写代码！",
    "u2": "语音识别，测试",
    "zz_extra": "多余的参考",
}


@pytest.fixture(scope="module")
def bench_run(fun_asr_tiny, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(5)
    lines = []
    for i, seconds in enumerate((0.8, 1.5, 1.1, 0.6)):
        path = root / f"u{i}.wav"
        sf.write(path, 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
        lines.append(f"u{i} {path}")
    (root / "wav.scp").write_text("\n".join(lines) + "\n")
    (root / "ref.txt").write_text("".join(f"{k} {v}\n" for k, v in REFS.items()))
    out = root / "out"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "asrctl", "bench", str(root / "wav.scp")),
            *("--ref", str(root / "ref.txt"), "--model", str(fun_asr_tiny), "-o", str(out)),
            *("--language", "zh", "--warmup", "1", "--repeat", "2", "--max-tokens", "8"),
            *("--batch-size", "2", *ENGINE_FLAGS),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {FAKE_ENGINE_ENV: "1"},
    )
    return run, out


def test_bench_prints_report_path_and_summary(bench_run):
    run, out = bench_run
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out / "bench.json")  # the only data on stdout
    for text in ("CER", "RTFx end-to-end", "RTFx engine-only", "model load", "u3"):
        assert text in run.stderr, text
    assert "Traceback" not in run.stderr


def test_report_fields(bench_run, fun_asr_tiny):
    _, out = bench_run
    report = json.loads((out / "bench.json").read_text())
    assert report["kind"] == "offline" and report["schema"] == 1
    assert report["model"]["family"] == "fun-asr-nano"
    assert Path(report["model"]["dir"]) == Path(fun_asr_tiny).resolve()
    assert report["command"].startswith("asrctl bench ") and "--ref" in report["command"]
    hw = report["hardware"]
    assert hw["cpu"] and hw["cores"] >= 1 and hw["ram_gib"] > 0 and hw["gpus"] == []
    versions = report["versions"]
    assert versions["asrctl"] and versions["vllm"] and versions["torch"]
    assert versions["transformers"]
    assert report["settings"]["engine"]["dtype"] == "float32"
    assert report["settings"]["transcribe"]["max_tokens"] == 8
    assert report["inputs"]["transcribed"] == 4 and report["inputs"]["failed"] == []
    assert report["inputs"]["audio_s"] == pytest.approx(0.8 + 1.5 + 1.1 + 0.6)


def test_speed_section_says_what_was_timed(bench_run):
    _, out = bench_run
    speed = json.loads((out / "bench.json").read_text())["speed"]
    assert speed["repeat"] == 2 and speed["warmup_utterances"] == 1
    assert speed["model_load_s"] > 0
    for mode in ("end_to_end", "engine_only"):
        s = speed[mode]
        assert len(s["runs_wall_s"]) == 2 and s["median_wall_s"] > 0
        assert s["audio_s"] == pytest.approx(4.0)
        assert s["rtfx"] == pytest.approx(s["audio_s"] / s["median_wall_s"], rel=1e-2)
        assert "model load excluded" in s["scope"] or "model load" in s["scope"]
    assert "file read/decode" in speed["end_to_end"]["scope"]
    assert "in memory" in speed["engine_only"]["scope"]
    assert speed["deterministic"] is True  # greedy decoding: same text every run


def test_accuracy_counts_add_up_and_match_jiwer(bench_run):
    _, out = bench_run
    report = json.loads((out / "bench.json").read_text())
    acc = report["accuracy"]
    assert (acc["metric"], acc["unit"], acc["language"]) == ("cer", "mixed", "zh")
    assert acc["keys"]["scored"] == 3
    assert acc["keys"]["missing_hypothesis"] == {"count": 1, "first": ["zz_extra"]}
    assert acc["keys"]["missing_reference"] == {"count": 1, "first": ["u3"]}
    scored = [u for u in report["utterances"] if "n" in u]
    assert sorted(u["key"] for u in scored) == ["u0", "u1", "u2"]
    totals = acc["totals"]
    for field in ("n", "hits", "substitutions", "deletions", "insertions"):
        assert sum(u[field] for u in scored) == totals[field], field
    assert totals["n"] == 6 + 6 + 6  # punctuation removed; "python" is one token
    theirs = jiwer.process_words(
        [" ".join(tokens(u["ref_norm"], "mixed")) for u in scored],
        [" ".join(tokens(u["hyp_norm"], "mixed")) for u in scored],
    )
    assert (theirs.substitutions, theirs.deletions, theirs.insertions) == (
        totals["substitutions"],
        totals["deletions"],
        totals["insertions"],
    )
    assert totals["error_rate"] == pytest.approx(theirs.wer)
    by_key = {u["key"]: u for u in report["utterances"]}
    assert by_key["u1"]["ref_norm"] == "我用python写代码"
    assert "n" not in by_key["u3"]  # transcribed, not scored


def test_worst_alignments_and_chart(bench_run):
    _, out = bench_run
    report = json.loads((out / "bench.json").read_text())
    assert report["worst"]  # English words against Chinese references
    worst = (out / "worst.txt").read_text()
    assert "REF:" in worst and "HYP:" in worst
    assert report["worst"][0] in worst
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["files"]["chart"] == str(out / "bench.png")
