"""One error hierarchy for the library; the CLI maps it to messages in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asrctl.results import Failure, Transcript


class AsrctlError(Exception):
    """Base class of every error asrctl raises on purpose.

    ``hint`` is an optional sentence telling the user how to fix the problem.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class AudioError(AsrctlError):
    """An input could not be read or decoded as usable audio. Names the key and the cause."""

    def __init__(self, key: str, cause: str, *, hint: str | None = None) -> None:
        super().__init__(f"{key}: {cause}", hint=hint)
        self.key = key
        self.cause = cause


class InputError(AsrctlError):
    """An input list (wav.scp, segments, manifest, folder) is missing or malformed."""


class ModelDirError(AsrctlError):
    """A model directory is missing files or holds malformed ones.

    ``problems`` lists every problem found, each naming the file and what it should hold.
    """

    def __init__(self, model_dir: str, problems: list[str], *, hint: str | None = None) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"model directory {model_dir} is not usable:\n{lines}", hint=hint)
        self.problems = problems


class UnknownFamilyError(AsrctlError):
    """No adapter recognises a model directory's layout."""


class EngineError(AsrctlError):
    """vLLM could not be imported, started or run."""


class OptionsError(AsrctlError):
    """An option value is invalid (e.g. an unsupported language for a family)."""


class MainGuardError(AsrctlError):
    """A script started a model without the ``if __name__ == "__main__":`` guard
    (see :mod:`asrctl.mainguard`)."""


class TranscriptionError(AsrctlError):
    """Some inputs of a library call could not be transcribed. ``failures`` names each one
    and why; ``results`` holds every result in input order (a ``Failure`` where one
    failed)."""

    def __init__(self, failures: list[Failure], results: list[Transcript | Failure]) -> None:
        shown = "\n".join(f"  - {f.error}" for f in failures[:10])
        more = f"\n  … and {len(failures) - 10} more" if len(failures) > 10 else ""
        super().__init__(
            f"{len(failures)} of {len(results)} inputs could not be transcribed:\n{shown}{more}",
            hint='pass errors="return" to get Failure objects in the list instead',
        )
        self.failures = failures
        self.results = results
