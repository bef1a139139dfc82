"""setup on damaged model folders: a clear error and exit 3, never a traceback; folders a
killed setup left behind are removed by the next run (issue 18, items 10 and 12)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import run_asrctl

from asrctl.export import remove_stale_temps


def _setup_fails(model_dir: Path, *needles: str) -> str:
    proc = run_asrctl("setup", str(model_dir), timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_damaged_model_pt_exits_3(fun_asr_copy: Path, damage: str) -> None:
    path = fun_asr_copy / "model.pt"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(os.urandom(100_000))
    _setup_fails(fun_asr_copy, "model.pt: not a loadable torch checkpoint")
    assert not (fun_asr_copy / ".asrctl" / "llm").exists()


def test_model_pt_without_a_module_exits_3(fun_asr_copy: Path) -> None:
    import torch

    state = torch.load(fun_asr_copy / "model.pt", weights_only=True)
    state = state.get("state_dict", state)
    torch.save(
        {k: v for k, v in state.items() if not k.startswith("audio_adaptor.")},
        fun_asr_copy / "model.pt",
    )
    _setup_fails(fun_asr_copy, "model.pt: no audio_adaptor.* tensors")


def test_broken_config_yaml_names_the_yaml_error(fun_asr_copy: Path) -> None:
    conf = fun_asr_copy / "config.yaml"
    conf.write_text(conf.read_text() + "\nbroken: [unclosed\n")
    stderr = _setup_fails(fun_asr_copy, "config.yaml: not valid YAML")
    assert "does not look like a supported model directory" not in stderr
    assert "line" in stderr


def test_killed_setup_leftovers_are_removed_by_the_next_run(fun_asr_copy: Path) -> None:
    cache = fun_asr_copy / ".asrctl"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    leftovers = [
        cache / f"llm.tmp-{host}-{dead.pid}-abc123",  # this asrctl, killed with -9
        cache / "llm.tmp-k2j3h4g5",  # an older asrctl's name (no owner)
    ]
    for d in leftovers:
        (d / "llm").mkdir(parents=True)
        (d / "llm" / "model.safetensors").write_bytes(b"half")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        in_progress = cache / f"llm.tmp-{host}-{alive.pid}-xyz789"
        in_progress.mkdir()
        proc = run_asrctl("setup", str(fun_asr_copy), timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert not any(d.exists() for d in leftovers)
        assert in_progress.exists()  # another export still running is left alone
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            ["llm", "manifest.json", "vllm", in_progress.name]
        )
    finally:
        alive.kill()
        alive.wait()
    assert remove_stale_temps(cache) == [in_progress]


def test_a_real_kill_9_leaves_nothing_behind_after_rerun(fun_asr_copy: Path) -> None:
    """Kill setup while it writes (its temp folder exists), then run it again."""
    script = (
        "import os, signal, sys\n"
        "import asrctl.export as ex\n"
        "real = ex._write_llm\n"
        "def killed(adapter, dest):\n"
        "    real(adapter, dest)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "ex._write_llm = killed\n"
        f"ex.prepare({str(fun_asr_copy)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9
    cache = fun_asr_copy / ".asrctl"
    assert [p.name for p in cache.glob("llm.tmp-*")], "the killed run left its temp folder"
    assert run_asrctl("setup", str(fun_asr_copy), timeout=120).returncode == 0
    assert not list(cache.glob("llm.tmp-*"))
