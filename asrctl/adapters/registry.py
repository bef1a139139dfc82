"""Find the adapter for a model directory by what is on disk.

Adapters are imported lazily (``"module:Class"`` strings, as vLLM's model registry does),
so listing families or printing ``--help`` never imports torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from asrctl.adapters.base import Adapter
from asrctl.errors import ModelDirError, UnknownFamilyError

# family name -> "module:Class"; order is the detection order.
ADAPTERS: dict[str, str] = {
    "fun-asr-nano": "asrctl.adapters.fun_asr_nano:FunAsrNanoAdapter",
    "fireredasr-llm": "asrctl.adapters.fireredasr_llm:FireRedAsrLlmAdapter",
    "glm-asr-nano": "asrctl.adapters.glm_asr:GlmAsrAdapter",
    "vibevoice-asr": "asrctl.adapters.vibevoice_asr:VibeVoiceAsrAdapter",
}


def adapter_class(family: str) -> type[Adapter]:
    """The adapter class registered for ``family``."""
    try:
        module, _, name = ADAPTERS[family].partition(":")
    except KeyError:
        raise UnknownFamilyError(
            f"unknown family {family!r}; supported: {', '.join(ADAPTERS)}"
        ) from None
    return getattr(importlib.import_module(module), name)


def resolve_model_dir(model_dir: str | Path) -> Path:
    """The real path of a model directory (symlinks resolved), or ModelDirError."""
    path = Path(model_dir).expanduser()
    if path.is_symlink() and not path.exists():
        raise ModelDirError(str(path), [f"broken symlink to {path.readlink()}"])
    if not path.exists():
        raise ModelDirError(str(path), ["no such directory"])
    if not path.is_dir():
        raise ModelDirError(str(path), ["not a directory (pass the model's folder)"])
    return path.resolve()


def detect(model_dir: str | Path) -> Adapter:
    """The adapter for ``model_dir``; raises UnknownFamilyError listing supported families."""
    path = resolve_model_dir(model_dir)
    for family in ADAPTERS:
        cls = adapter_class(family)
        if cls.matches(path):
            return cls(path)
    supported = "; ".join(
        f"{adapter_class(f).family.title} ({f}: "
        f"{', '.join(r.path for r in adapter_class(f).required)})"
        for f in ADAPTERS
    )
    raise UnknownFamilyError(
        f"{path} does not look like a supported model directory. Supported: {supported}",
        hint="point --model at the folder holding the checkpoint files as released",
    )


def load_adapter(model_dir: str | Path) -> Adapter:
    """Detect the family and check the directory; raises ModelDirError listing every problem."""
    adapter = detect(model_dir)
    problems = adapter.check()
    if problems:
        raise ModelDirError(str(adapter.model_dir), problems)
    return adapter
