"""The one place that maps library errors to messages and exit codes."""

from __future__ import annotations

import os

from asrctl.cli import _output
from asrctl.errors import (
    AsrctlError,
    AudioError,
    EngineError,
    InputError,
    ModelDirError,
    OptionsError,
    UnknownFamilyError,
)

# Subclasses before parents; each value is (exit code, label).
ERROR_MAP: tuple[tuple[type[AsrctlError], int, str], ...] = (
    (ModelDirError, 3, "model directory"),
    (UnknownFamilyError, 3, "unknown model layout"),
    (InputError, 4, "input"),
    (AudioError, 4, "audio"),
    (OptionsError, 2, "options"),
    (EngineError, 5, "engine"),
    (AsrctlError, 1, ""),
)
DEBUG_HINT = "set ASRCTL_DEBUG=1 (or pass --debug) for the full traceback"


def debug_enabled() -> bool:
    return os.environ.get("ASRCTL_DEBUG", "") not in ("", "0")


def engine_death(exc: BaseException) -> EngineError | None:
    """An :class:`EngineError` for vLLM's ``EngineDeadError`` (its engine process is gone:
    killed, most often by the kernel for want of memory), else None. Looked up by name so
    that vLLM is not imported here."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if any(c.__name__ == "EngineDeadError" for c in type(cause).__mro__):
            return EngineError(
                "the vLLM engine process died (killed, most often by the kernel when memory "
                "runs out: see `dmesg`)",
                hint="finished batches are kept: rerun the same command with --resume to "
                "continue (lower --max-num-seqs or --batch-size to use less memory)",
            )
        cause = cause.__cause__ or cause.__context__
    return None


def report(error: AsrctlError) -> int:
    """Print ``error`` to stderr and return the exit code for it."""
    for cls, code, label in ERROR_MAP:
        if isinstance(error, cls):
            prefix = f"{label}: " if label else ""
            _output.error(f"{prefix}{error}", error.hint)
            if not debug_enabled() and isinstance(error, EngineError):
                _output.info(DEBUG_HINT, style="dim")
            return code
    return 1
