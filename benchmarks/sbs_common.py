"""side_by_side.py's plumbing: its child processes (each under a time limit, killed as a
group), the ``Child`` each part runs in, and the settings the parts share."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = HERE / "side_by_side.py"  # the entry point every child process runs
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402  benchmarks/throughput.py: workload, fixtures, versions

# asrctl's defaults with a GPU (the CLI's; TranscribeOptions and EngineOptions), as
# throughput.py flags: no precision flag beyond "auto"
DEFAULT_FLAGS = [
    "--batch-size", "1024", "--encoder-batch-size", "256", "--encoder-batch-seconds", "960",
    "--max-in-flight", "1024", "--encoder-dtype", "auto",
]  # fmt: skip

SUMMARY = re.compile(
    r"(\d+) transcribed, (\d+) failed; ([\d.]+) s of audio in ([\d.]+) s \(RTFx ([\d.]+)"
)


CLIPS = 64


MARGIN_S = 15  # a child stops starting steps this long before its deadline


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """This checkout first on PYTHONPATH (scripts run from benchmarks/), unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.smoke:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return env


class Runner:
    """Runs commands in their own process groups, output to our stderr (prefixed) and a
    tail kept; past a timeout the group is killed. SIGTERM kills every live group."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.live: set[int] = set()
        self.commands: list[str] = []

    def run(
        self, cmd: list[str], timeout: float, label: str, cwd: Path = ROOT, env: dict | None = None
    ) -> dict:
        """Run ``cmd`` (this runner's environment, plus ``env``) for at most ``timeout`` s."""
        self.commands.append(" ".join(cmd))
        print(f"[{label}] $ {' '.join(cmd)}  (limit {timeout:.0f} s)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=self.env | (env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.live.add(proc.pid)
        lines: list[str] = []
        stamps: list[float] = []  # seconds after the start at which each line came

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(f"[{label}] {line.rstrip()}"[:600], file=sys.stderr, flush=True)
                stamps.append(round(time.perf_counter() - t0, 2))
                lines.append(line.rstrip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        killed = False
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            killed = True
            lines.append(f"side_by_side.py: stopped after {timeout:.0f} s")
        finally:
            if proc.poll() is None:
                stop_group(proc)
            self.live.discard(proc.pid)
        reader.join(10)
        return {
            "command": " ".join(cmd),
            "exit_code": proc.returncode,
            "seconds": round(time.perf_counter() - t0, 2),
            "timed_out": killed,
            "lines": lines,
            "stamps": stamps,
        }

    def kill_all(self, *_: object) -> None:
        """SIGTERM handler: stop every live group (vLLM's processes with them), exit."""
        for pid in list(self.live):
            kill_group(pid, signal.SIGTERM)
        time.sleep(5)
        for pid in list(self.live):
            kill_group(pid)
        raise SystemExit(143)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the process group (vLLM shuts down, a part's child stops its own
    children), SIGKILL after ``grace`` seconds."""
    kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait()


def tail(result: dict, n: int = 30) -> list[str]:
    return [line[-400:] for line in result["lines"][-n:]]


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def common_args(args: argparse.Namespace) -> list[str]:
    out = ["--workdir", str(args.workdir), "--size", args.size, "--n", str(args.n)]
    out += ["--glm-n", str(args.glm_n), "--replicas", args.replicas]
    out += ["--part-timeout", str(args.part_timeout), "--clips", str(args.clips)]
    out += ["--start-n", str(args.start_n), "--serve-variants", args.serve_variants]
    out += ["--short-n", str(args.short_n), "--replica-mode", args.replica_mode]
    out += ["--lean"] if args.lean else []
    return out + (["--smoke"] if args.smoke else [])


class Child:
    """What one part's process shares: its deadline, runner and the workload."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.part_timeout
        self.runner = Runner(child_env(args))
        signal.signal(signal.SIGTERM, self.runner.kill_all)
        self.sbs = args.workdir / "side-by-side"
        self.sbs.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic() - MARGIN_S

    def run(self, cmd: list[str], label: str, env: dict | None = None) -> dict:
        if self.left() < 20:
            return {"command": " ".join(cmd), "skipped": "no time left in this part", "lines": []}
        return self.runner.run(cmd, self.left(), label, env=env)

    def fun_asr(self) -> tuple[Path, Path, list[float]]:
        """The Fun-ASR-Nano checkpoint (exported, as after ``asrctl setup``) and files."""
        from asrctl.export import prepare

        model = throughput.ensure_fixture(
            "fun-asr-nano", self.args.workdir / f"fun-asr-nano-{self.args.size}", self.args.size
        )
        prepare(model)
        scp, durations = throughput.make_audio(self.args.workdir / "audio", self.args.n, seed=1)
        return model, scp, durations

    def smoke_flags(self) -> list[str]:
        """vLLM settings of a CPU smoke run (vllm-cpu)."""
        return ["--enforce-eager", "--dtype", "float32"] if self.args.smoke else []


def py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
