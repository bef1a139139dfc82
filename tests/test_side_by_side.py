"""Tests for benchmarks/side_by_side.py: the merged side-by-side file and its parts.

The summary is computed from part records as the parts write them; one part (``cli``: the
real CLI as a process, then throughput.py) runs for real on the tiny fixture with
asrctl.testing's fake engine, so the script's plumbing (child processes, time limits,
parsing, merging) is exercised without vLLM starting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import sbs_parts  # noqa: E402
import sbs_scale  # noqa: E402
import side_by_side as sbs  # noqa: E402

TOP = (
    "device",
    "asrctl_default_rtfx",
    "asrctl_best_rtfx",
    "funasr_rtfx",
    "native_rtfx",
    "cli_process_seconds",
    "glm_default_rtfx",
    "commands",
    "versions",
)


def test_cli_summary_is_parsed() -> None:
    lines = [
        "model ready: setup 0.1 s, vLLM 59.9 s, encoder 2.1 s",
        "2000 transcribed, 0 failed; 15750.8 s of audio in 8.8 s (RTFx 1789.9, model load "
        "excluded)",
    ]
    assert sbs_parts.cli_summary(lines) == {
        "model_ready": "setup 0.1 s, vLLM 59.9 s, encoder 2.1 s",
        "transcribed": 2000,
        "failed": 0,
        "audio_seconds": 15750.8,
        "transcribe_seconds": 8.8,
        "summary_rtfx": 1789.9,
    }


def test_first_result_times_the_first_line(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    watch = sbs_parts.FirstResult(results)
    results.write_text('{"key": "a"')  # a partial line is not a result yet
    time.sleep(0.3)
    assert watch.seen is None
    results.write_text('{"key": "a"}\n')
    deadline = time.monotonic() + 5  # the watcher polls every 50 ms (slower on a busy CI)
    while watch.seen is None and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = watch.stop()
    assert seen is not None and 0.3 <= seen < 5


def test_summary_has_the_cold_start() -> None:
    start = {"first": {"first_result_seconds": 41.5}, "again": {"first_result_seconds": 22.0}}
    start["own_process"] = {"first_result_seconds": 40.0}
    start["flashinfer_sampler"] = {"first_result_seconds": 120.0}
    top = sbs.summarize({"parts": {"start": start}})
    assert top["cold_start_first_result_s"] == 41.5
    assert top["warm_start_first_result_s"] == 22.0
    assert top["own_process_start_first_result_s"] == 40.0
    assert top["flashinfer_sampler_start_first_result_s"] == 120.0


def test_start_runs_turn_each_start_default_back() -> None:
    runs = dict(sbs_parts.START_RUNS)
    assert runs["first"] == runs["again"] == {}  # asrctl's defaults, no variable set
    assert runs["own_process"] == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    assert runs["flashinfer_sampler"] == {"VLLM_USE_FLASHINFER_SAMPLER": "1"}


def test_startup_lines_carry_the_seconds_since_exec() -> None:
    lines = ["noise", "INFO [model.py:623] Resolved architecture: Qwen3ForCausalLM", "x"]
    lines.append("init engine (profile, create kv cache, warmup model) took 2.65 s")
    got = sbs_parts.startup_lines(lines, [0.5, 20.04, 21.0, 46.2])
    assert got == [f"+20.0s {lines[1]}", f"+46.2s {lines[3]}"]
    assert sbs_parts.startup_lines(lines) == [lines[1], lines[3]]  # no stamps: as they came


def test_lean_runs_compare_serving_with_the_cli_summary() -> None:
    """--lean skips throughput.py's fixed-work pass: the CLI's own summary is the batch."""
    cli = {"cli": {"summary_rtfx": 3000.0}, "fixed_work": {"skipped": "--lean"}}
    top = sbs.summarize({"parts": {"cli": cli, "serve": {"c128": {"rtfx": 960.0}}}})
    assert top["serve_c128_vs_batch"] == 0.32
    assert top["asrctl_best_rtfx"] == 3000.0 and top["asrctl_best_config"] == "1 engine (defaults)"


def test_server_metrics_become_per_level_means() -> None:
    text = "\n".join(
        [
            "# HELP asrctl_encoder_batch_size Utterances per audio-encoder batch",
            'asrctl_encoder_batch_size_bucket{le="8.0"} 3.0',
            "asrctl_encoder_batch_size_count 4.0",
            "asrctl_encoder_batch_size_sum 40.0",
            'vllm:request_queue_time_seconds_count{model_name="m"} 10.0',
            'vllm:request_queue_time_seconds_sum{model_name="m"} 1.0',
            'asrctl_requests_total{endpoint="/a",status="200"} 7.0',
            'asrctl_requests_total{endpoint="/b",status="200"} 3.0',
        ]
    )
    before = sbs_scale.parse_metrics(text)
    assert before["asrctl_requests_total"] == 10.0  # summed over labels
    after = dict(before)
    after |= {"asrctl_encoder_batch_size_count": 6.0, "asrctl_encoder_batch_size_sum": 64.0}
    after |= {"vllm:request_queue_time_seconds_count": 30.0}
    after |= {"vllm:request_queue_time_seconds_sum": 5.0}
    means = sbs_scale.histogram_means(before, after)
    assert means["asrctl_encoder_batch_size"] == {"count": 2, "sum": 24.0, "mean": 12.0}
    assert means["vllm:request_queue_time_seconds"]["mean"] == 0.2
    assert sbs_scale.histogram_means(before, before) == {}  # nothing observed: nothing
    assert sbs_scale.scrape("http://127.0.0.1:9") == {}  # no server: empty, no error


def test_cli_tokens_sum_the_results(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    rows = [("a", 12, "stop"), ("b", 200, "length"), ("c", 3, "stop")]
    results.write_text(
        "".join(
            json.dumps({"key": k, "num_tokens": n, "finish_reason": r}) + "\n" for k, n, r in rows
        )
    )
    assert sbs_parts.cli_tokens(results) == {
        "generated_tokens": 215,
        "max_tokens_one_utterance": 200,
        "finish_reasons": {"stop": 2, "length": 1},
    }
    assert sbs_parts.cli_tokens(tmp_path / "missing.jsonl") == {}


def test_gpu_slug() -> None:
    assert sbs.gpu_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert sbs.gpu_slug("NVIDIA H200") == "h200"
    assert sbs.gpu_slug("") == "cpu"


def test_parts_merge_into_one_file_with_the_top_level_figures(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    versions = {"gpu": "NVIDIA H100 80GB HBM3, 81559 MiB", "vllm": "0.26.0"}
    cli = {
        "versions": versions,
        "cli": {"summary_rtfx": 1790.0, "process_seconds": 103.6},
        "fixed_work": {
            "end_to_end": {"median_rtfx": 3000.0},
            "variants": {"in_flight_128": {"rtfx": 1200.0}},
        },
        "commands": ["asrctl transcribe ..."],
    }
    sbs.merge(out, "cli", cli, "side_by_side.py --part cli")
    peers = {"peers": {"funasr": {"rtfx": 575.0}, "native": {"rtfx": 594.0}}, "commands": []}
    sbs.merge(out, "peers", peers, "side_by_side.py --part peers")
    best = {"replicas": {"2": {"rtfx": 5000.0}, "3": {"rtfx": 6100.0}, "4": {"error": "x"}}}
    sbs.merge(out, "best", best, "side_by_side.py --part best")
    serve = {"c1": {"p50_ms": 90.0}, "c128": {"rtfx": 2400.0}, "eb256": {"c128": {"rtfx": 2700}}}
    serve["eb64-s1920"] = {"c128": {"rtfx": 2500.0}}
    serve["eb16-graphs"] = {"c1": {"p50_ms": 50.0}, "c128": {"rtfx": 2600.0}}
    serve["eb16-eager"] = {"c1": {"p50_ms": 95.0}, "c128": {"rtfx": 2300.0}}
    sbs.merge(out, "serve", serve, "x")
    report = json.loads(out.read_text())
    assert all(k in report for k in TOP)
    assert report["device"] == versions["gpu"] and report["versions"] == versions
    assert report["asrctl_default_rtfx"] == 1790.0 and report["cli_process_seconds"] == 103.6
    assert report["asrctl_default_fixed_work_rtfx"] == 3000.0
    assert report["asrctl_best_rtfx"] == 6100.0 and report["asrctl_best_config"] == "3 engines"
    assert report["ratio_best_vs_funasr"] == round(6100 / 575, 2)
    assert report["ratio_default_fixed_work_vs_funasr"] == round(3000 / 575, 2)
    assert report["serve_c128_vs_batch"] == 0.8 and report["serve_c1_p50_ms"] == 90.0
    # the default server's pass size was not recorded before round 11: 16, the default then
    by_pass = report["serve_c128_rtfx_by_encoder_batch"]
    want = {"16": 2400.0, "16-eager": 2300.0, "16-graphs": 2600.0, "64-s1920": 2500.0}
    assert by_pass == want | {"256": 2700}
    assert list(by_pass) == ["16", "16-eager", "16-graphs", "64-s1920", "256"]
    # a default server without graphs (before round 13): its c=1 is the eager figure
    assert report["serve_graphs_c1_p50_ms"] is None and report["serve_eager_c1_p50_ms"] == 90.0
    assert report["batch_in_flight_128_rtfx"] == 1200.0
    assert report["serve_c128_vs_batch_in_flight_128"] == 2.0
    assert report["glm_default_rtfx"] is None  # not run yet
    assert report["commands"]["cli"] == ["asrctl transcribe ..."]
    assert set(report["parts"]) == {"cli", "peers", "best", "serve"}
    sbs.merge(out, "cli", cli | {"cli": {"summary_rtfx": 1800.0}}, "again")  # a rerun replaces
    assert json.loads(out.read_text())["asrctl_default_rtfx"] == 1800.0


def test_texts_compared_with_the_single_engines(tmp_path: Path) -> None:
    ref = tmp_path / "texts-default.json"
    assert sbs_scale.compare({"a": "x"}, ref)["compared"] == 0  # no reference yet: said so
    ref.write_text(json.dumps({"a": "x", "b": "y", "c": "z"}))
    got = sbs_scale.compare({"a": "x", "b": "w", "d": "q"}, ref)
    assert (got["compared"], got["identical"], got["differing_keys"]) == (2, 1, ["b"])
    assert got["keys_in_one_only"] == ["c", "d"]


def run_part_on_fake_engine(
    tmp_path: Path, part: str, *flags: str, part_timeout: int
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``side_by_side.py --part PART`` (tiny fixtures, --smoke) on the fake engine: the
    finished process (exit 0) and the results file."""
    out = tmp_path / "r.json"
    env = dict(os.environ, ASRCTL_FAKE_ENGINE="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "side_by_side.py"), "--workdir",
         str(tmp_path / "w"), "--size", "tiny", *flags, "--smoke", "--part", part,
         "--part-timeout", str(part_timeout), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_the_cli_part_on_the_fake_engine(tmp_path: Path) -> None:
    """`--part cli` end to end: the CLI timed as a process, throughput.py's fixed work
    with asrctl's defaults, both in the file, texts kept for the best part."""
    pytest.importorskip("vllm")  # throughput.py reports vLLM's version
    done, report = run_part_on_fake_engine(tmp_path, "cli", "--n", "4", part_timeout=300)
    cli = report["parts"]["cli"]
    assert cli["cli"]["exit_code"] == 0 and cli["cli"]["transcribed"] == 4, cli
    assert cli["cli"]["generated_tokens"] > 0 and sum(cli["cli"]["finish_reasons"].values()) == 4
    assert report["cli_process_seconds"] > 0 and report["asrctl_default_rtfx"] > 0
    assert report["asrctl_default_fixed_work_rtfx"] > 0
    fixed = cli["fixed_work"]
    assert fixed["settings"]["encoder_dtype"] == "auto" and fixed["settings"]["batch_size"] == 1024
    assert fixed["workload"]["generated_tokens"] > 0
    assert fixed["variants"]["in_flight_128"]["settings"] == {"max_in_flight": 128}
    assert report["batch_in_flight_128_rtfx"] == fixed["variants"]["in_flight_128"]["rtfx"] > 0
    texts = json.loads((tmp_path / "w" / "side-by-side" / "texts-default.json").read_text())
    assert len(texts) == 4
    assert json.loads(done.stdout)["asrctl_default_rtfx"] == report["asrctl_default_rtfx"]
    # then the in-process part beside it, in the same file: the CLI with vLLM's variable,
    # throughput.py --in-process, its texts against the cli part's
    _, report = run_part_on_fake_engine(tmp_path, "inproc", "--n", "4", part_timeout=300)
    inproc = report["parts"]["inproc"]
    assert inproc["cli"]["exit_code"] == 0 and inproc["cli"]["transcribed"] == 4, inproc
    assert inproc["cli"]["env"] == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert inproc["fixed_work"]["settings"]["in_process"] is True
    variants = inproc["fixed_work"]["variants"]
    assert variants["threads_1"]["settings"] == {"torch_threads": 1}
    assert variants["switch_1ms"]["rtfx"] > 0 and variants["threads_1"]["rtfx"] > 0
    assert report["in_process_cli_rtfx"] == inproc["cli"]["summary_rtfx"] > 0
    assert report["in_process_fixed_work_rtfx"] > 0
    assert inproc["identical_to_multiprocess"]["compared"] == 4
    assert report["asrctl_default_rtfx"] == cli["cli"]["summary_rtfx"]  # cli's record kept


def test_the_hour_part_times_one_long_single_pass(tmp_path: Path) -> None:
    """`--part hour` on the fake engine: VibeVoice's fixture, then the CLI on one long
    file (60 s with --smoke; an hour on a GPU), fixed work, in one pass."""
    pytest.importorskip("vllm")  # the part reports vLLM's version
    _, report = run_part_on_fake_engine(tmp_path, "hour", part_timeout=400)
    hour = report["parts"]["hour"]
    assert hour["exit_code"] == 0 and hour["transcribed"] == 1 and hour["audio_seconds"] == 60
    assert hour["generated_tokens"] == 240 and hour["finish_reasons"] == {"length": 1}  # 4/s
    assert report["vibevoice_one_hour_process_s"] == hour["process_seconds"] > 0


def test_summary_keys_the_default_server_with_graphs_as_graphs() -> None:
    """Since round 13 the default server graphs small encoder passes; eb64-eager is the
    comparison."""
    serve = {"encoder_batch_size": 64, "encoder_graphs": True, "c1": {"p50_ms": 76.6}}
    serve |= {"c128": {"rtfx": 1500.0}}
    serve["eb64-eager"] = {"c1": {"p50_ms": 137.2}, "c128": {"rtfx": 724.2}}
    top = sbs.summarize({"parts": {"serve": serve}})
    assert top["serve_graphs_c1_p50_ms"] == 76.6 and top["serve_eager_c1_p50_ms"] == 137.2
    assert top["serve_c128_rtfx_by_encoder_batch"] == {"64-eager": 724.2, "64-graphs": 1500.0}


def test_native_peer_from_its_own_part() -> None:
    """``--part native`` runs vLLM's native class alone (its load outlasted half a peers
    part); its figure is the top-level native_rtfx."""
    top = sbs.summarize({"parts": {"native": {"peers": {"native": {"rtfx": 600.0}}}}})
    assert top["native_rtfx"] == 600.0


def test_the_best_part_in_plain_processes_on_the_fake_engine(tmp_path: Path) -> None:
    """`--part best --replica-mode processes`: K replica processes share vLLM's default
    GPU share, texts compared with one engine's (none here: the note says so)."""
    from asrctl.engine import GPU_MEMORY_UTILIZATION

    _, report = run_part_on_fake_engine(
        tmp_path, "best", "--n", "4", "--replicas", "2", "--replica-mode", "processes",
        part_timeout=300,
    )  # fmt: skip
    two = report["parts"]["best"]["replicas"]["2"]
    assert two["mode"] == "processes" and two["utterances"] == 4, two
    assert two["gpu_memory_utilization_each"] == GPU_MEMORY_UTILIZATION / 2
    assert two["identical_to_one_engine"]["compared"] == 0
