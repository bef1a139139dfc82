"""One error hierarchy for the library; the CLI maps it to messages in one place."""

from __future__ import annotations


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
