"""transformers-format checkpoints: weight files, key layouts, the config's dtype.

The multimodal classes (``GlmAsrForConditionalGeneration``,
``VibeVoiceAsrForConditionalGeneration``) find the same tensor under several names, and
``from_pretrained`` loads every one of them through its ``conversion_mapping`` renames:

* **release** — what transformers' conversion scripts write and the published repos hold:
  the audio modules at the top (``audio_tower.*``, ``multi_modal_projector.*``), the LLM
  under ``language_model.model.*`` and ``language_model.lm_head.weight``;
* **transformers-saved** — ``save_pretrained`` of a model built from a config (transformers
  5.19) doubles the prefix: ``language_model.model.model.*``;
* **in-memory** — the module names themselves (``model.audio_tower.*``,
  ``model.language_model.*``, ``lm_head.weight``), as ``state_dict()`` gives them and
  asrctl's fixtures write.

:class:`KeyLayout` maps any of them (any run of ``model.``/``language_model.`` in front of
the LLM's ``embed_tokens``/``layers``/``norm``, an optional ``model.`` in front of an audio
module) onto the release names, so adapters read one set of names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
LLM_MODEL = "language_model.model."  # release names of the LLM body
LM_HEAD = "language_model.lm_head.weight"
_LLM_BODY = re.compile(
    r"^(?P<pre>(?:(?:model|language_model)\.)+)(?P<inner>(?:embed_tokens|layers|norm|rotary_emb)\..*)$"
)
_LM_HEAD = re.compile(r"^(?:(?:model|language_model)\.)*lm_head\.weight$")
LAYOUTS = {
    "language_model.model.model.": "transformers-saved (save_pretrained)",
    "language_model.model.": "release (transformers conversion)",
    "model.language_model.": "in-memory names (asrctl fixture / state_dict)",
}


def weight_files(model_dir: Path) -> list[Path]:
    """The shards named by ``model.safetensors.index.json``, or ``model.safetensors``.

    Raises:
        ValueError, KeyError: The index is not JSON with a ``weight_map``.
    """
    index = model_dir / INDEX
    if index.is_file():
        names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [model_dir / n for n in names]
    return [model_dir / SINGLE]


def config_dtype(*configs: Mapping | None) -> str | None:
    """The first ``dtype`` (transformers 5) or ``torch_dtype`` (older) among ``configs``."""
    for config in configs:
        for key in ("dtype", "torch_dtype"):
            value = (config or {}).get(key)
            if isinstance(value, str) and value != "auto":
                return value
    return None


def set_dtype(config: dict, dtype: str) -> dict:
    """``config`` with both dtype spellings set to ``dtype`` (no stale one left to win)."""
    config["dtype"] = dtype
    config["torch_dtype"] = dtype
    return config


@dataclass(frozen=True)
class KeyLayout:
    """Release names for one architecture: ``audio`` lists its top-level audio modules."""

    audio: tuple[str, ...]

    def canonical(self, key: str) -> str | None:
        """``key`` under its release name, or None if it belongs to no known module."""
        if _LM_HEAD.match(key):
            return LM_HEAD
        body = _LLM_BODY.match(key)
        if body and "language_model." in body["pre"]:
            return LLM_MODEL + body["inner"]
        name = key.removeprefix("model.")
        if name.split(".", 1)[0] in self.audio:
            return name
        return None

    def layout_name(self, keys: Iterable[str]) -> str:
        """Which of :data:`LAYOUTS` the LLM keys use (the first one that matches)."""
        for key in keys:
            body = _LLM_BODY.match(key)
            if body and "language_model." in body["pre"]:
                return LAYOUTS.get(body["pre"], f"{body['pre']}* (accepted by transformers)")
        return "no LLM keys"


@dataclass(frozen=True)
class Checkpoint:
    """A transformers safetensors checkpoint read under release names."""

    files: tuple[Path, ...]
    names: Mapping[str, tuple[Path, str]]  # release name -> (file, name in the file)
    layout: str
    unknown: tuple[str, ...]  # keys no module claims (ignored, as transformers warns)

    @classmethod
    def open(cls, model_dir: Path, layout: KeyLayout) -> Checkpoint:
        """Read the headers; raises ValueError naming the file on a bad or ambiguous one."""
        from safetensors import safe_open

        files = tuple(weight_files(model_dir))
        names: dict[str, tuple[Path, str]] = {}
        unknown, raw = [], []
        for path in files:
            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = list(f.keys())
            except Exception as e:  # safetensors raises its own error types
                raise ValueError(f"{path.name}: not a readable safetensors file ({e})") from e
            raw += keys
            for key in keys:
                name = layout.canonical(key)
                if name is None:
                    unknown.append(key)
                elif name in names:
                    first = names[name][1]
                    raise ValueError(f"{path.name}: {key} and {first} are the same tensor ({name})")
                else:
                    names[name] = (path, key)
        return cls(files, names, layout.layout_name(raw), tuple(unknown))

    def tensors(self, want) -> Iterator[tuple[str, torch.Tensor]]:
        """``(release name, tensor)`` for every name ``want`` accepts, file by file."""
        from safetensors import safe_open

        for path in self.files:
            picked = [(n, k) for n, (p, k) in self.names.items() if p == path and want(n)]
            if not picked:
                continue
            with safe_open(str(path), framework="pt") as f:
                for name, key in picked:
                    yield name, f.get_tensor(key)

    def llm_tensors(self, *, tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
        """The LLM under stock ``...ForCausalLM`` names (``lm_head`` dropped when tied)."""
        for name, t in self.tensors(lambda n: n.startswith(LLM_MODEL) or n == LM_HEAD):
            if name == LM_HEAD:
                if not tied:
                    yield "lm_head.weight", t
            else:
                yield "model." + name[len(LLM_MODEL) :], t

    def groups(self) -> dict[str, int]:
        """Tensor count per top-level module (``language_model.model.layers`` counted once)."""
        out: dict[str, int] = {}
        for name in self.names:
            parts = name.split(".")
            group = ".".join(parts[:3] if name.startswith(LLM_MODEL) else parts[:1])
            out[group] = out.get(group, 0) + 1
        return out
