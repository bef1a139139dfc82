"""Machine facts: GPUs come from nvidia-smi, so CUDA stays uninitialised for vLLM's fork."""

from __future__ import annotations

import stat
import subprocess
import sys

from asrctl import envinfo


def _fake_nvidia_smi(bin_dir, monkeypatch, output: str) -> None:
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{output}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_gpus_are_read_from_nvidia_smi_and_respect_visible_devices(tmp_path, monkeypatch):
    _fake_nvidia_smi(
        tmp_path, monkeypatch, "0, NVIDIA H100 80GB HBM3, 81559\\n1, NVIDIA H200, 143771\\n"
    )
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert envinfo.gpus() == [
        {"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.6},
        {"name": "NVIDIA H200", "memory_gib": 140.4},
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g["name"] for g in envinfo.gpus()] == ["NVIDIA H200"]


def test_no_nvidia_smi_means_no_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert envinfo.gpus() == []


def test_process_age_counts_from_the_process_start():
    code = "import time; time.sleep(0.6); from asrctl import envinfo; print(envinfo.process_age())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    age = float(done.stdout)
    assert 0.55 <= age < 10  # /proc counts in 10 ms ticks
