"""Export a model's LLM once into a stock vLLM directory, cached beside the model.

The cache lives in ``<model_dir>/.asrctl/`` (or ``$ASRCTL_CACHE/<hash>/`` when the model
folder is read-only or a cache root is given). ``llm/`` holds config.json, tokenizer files
and model.safetensors; ``manifest.json`` records the source files' sizes, mtimes and
SHA-256 hashes. The export is reused while the sources are unchanged (same size and mtime,
or same hash) and rebuilt otherwise. It is written into a temporary folder and moved into
place in one rename, so a killed export never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asrctl.adapters._hf import config_dtype, set_dtype
from asrctl.adapters.base import Adapter
from asrctl.adapters.registry import load_adapter
from asrctl.errors import AsrctlError, ModelDirError
from asrctl.llm_check import check_llm

log = logging.getLogger("asrctl")

EXPORT_FORMAT = 1  # bump when the export layout changes: old caches are rebuilt
CACHE_DIRNAME = ".asrctl"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
)
_CHUNK = 8 << 20  # bytes read per hash update
TMP_PREFIX = "llm.tmp-"
_OWNER = re.compile(r"^llm\.tmp-(?P<host>.+)-(?P<pid>\d+)-[^-]*$")
_FOREIGN_TMP_AGE_S = 86400  # another host's unfinished export is left alone this long


@dataclass(frozen=True)
class PreparedModel:
    """A model directory ready for the engine."""

    model_dir: Path  # resolved real path
    family: str
    llm_dir: Path  # the exported stock LLM folder vLLM loads
    reused: bool  # True when an up-to-date export was found


def cache_root(model_dir: Path, cache_dir: Path | None = None) -> Path:
    """Where the export of ``model_dir`` lives."""
    base = cache_dir or os.environ.get("ASRCTL_CACHE")
    if base is None and os.access(model_dir, os.W_OK):
        return model_dir / CACHE_DIRNAME
    base = Path(base or Path.home() / ".cache" / "asrctl")
    return Path(base) / hashlib.sha256(str(model_dir).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _source_record(path: Path, model_dir: Path, old: dict | None) -> dict:
    stat = path.stat()
    rec = {
        "path": os.path.relpath(path, model_dir),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    if old and old.get("size") == rec["size"] and old.get("mtime_ns") == rec["mtime_ns"]:
        rec["sha256"] = old["sha256"]  # unchanged on disk: trust the recorded hash
    else:
        rec["sha256"] = sha256_file(path)
    return rec


def _read_manifest(root: Path) -> dict:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _sources(adapter: Adapter, old: dict) -> list[dict]:
    previous = {s["path"]: s for s in old.get("sources", [])}
    paths = adapter.llm_export().sources
    return [
        _source_record(p, adapter.model_dir, previous.get(os.path.relpath(p, adapter.model_dir)))
        for p in paths
    ]


def _is_current(root: Path, old: dict, family: str, sources: list[dict]) -> bool:
    same = [(s["path"], s["sha256"]) for s in sources] == [
        (s["path"], s["sha256"]) for s in old.get("sources", [])
    ]
    return (
        same
        and old.get("format") == EXPORT_FORMAT
        and old.get("family") == family
        and (root / "llm" / WEIGHTS_FILE).is_file()
    )


def _write_llm(adapter: Adapter, dest: Path) -> None:
    from safetensors.torch import save_file

    export = adapter.llm_export()
    dest.mkdir(parents=True)
    config = dict(export.config)
    dtype = config_dtype(config)  # transformers 5's "dtype" first, then "torch_dtype"
    if dtype is not None:
        set_dtype(config, dtype)  # both spellings agree, whichever a reader looks at
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        src = export.tokenizer_dir / name
        if src.is_file():
            shutil.copyfile(src, dest / name)
    tensors, storages = {}, set()
    for name, t in adapter.llm_tensors():
        t = t.contiguous()
        if t.untyped_storage().data_ptr() in storages:
            t = t.clone()  # tied weights saved shared (lm_head = embed_tokens): safetensors refuses
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    problems = check_llm(
        export.config,
        {n: tuple(t.shape) for n, t in tensors.items()},
        config_name=export.config_source,
    )
    if problems:
        raise ModelDirError(str(adapter.model_dir), problems)
    save_file(tensors, str(dest / WEIGHTS_FILE), metadata={"format": "pt"})


def export_llm(
    adapter: Adapter,
    *,
    cache_dir: Path | None = None,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> PreparedModel:
    """Export (or reuse) the LLM of an already-checked adapter."""
    root = cache_root(adapter.model_dir, cache_dir)
    family = adapter.family.name
    step = on_step or (lambda msg: log.info("%s", msg))
    _write_setup_files(adapter)
    old = _read_manifest(root)
    step("hashing source files")
    sources = _sources(adapter, old)
    if not force and _is_current(root, old, family, sources):
        _write_manifest(root, family, sources)  # refresh mtimes after a touch
        return PreparedModel(adapter.model_dir, family, root / "llm", reused=True)
    step(f"exporting the LLM to {root / 'llm'}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(root)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(), dir=root))
    except OSError as e:
        raise AsrctlError(
            f"cannot write the export cache {root}: {e}",
            hint="pass --cache-dir or set ASRCTL_CACHE to a writable folder",
        ) from e
    try:
        _write_llm(adapter, tmp / "llm")
        replace_dir(tmp / "llm", root / "llm")
        _write_manifest(root, family, sources)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedModel(adapter.model_dir, family, root / "llm", reused=False)


def _tmp_prefix() -> str:
    """``llm.tmp-HOST-PID-``: the owner, so a later run knows whether it is still alive."""
    return f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(root: Path) -> list[Path]:
    """Remove ``llm.tmp-*`` folders a killed export left in ``root``; return them.

    A folder whose owner (host and pid in its name) is a live process on this host is an
    export in progress and is kept; one from another host is kept for a day; one without an
    owner in its name (written by an older asrctl) is removed.
    """
    removed = []
    host = socket.gethostname()
    for path in root.glob(TMP_PREFIX + "*"):
        m = _OWNER.match(path.name)
        if m and m["pid"] != str(os.getpid()):
            if m["host"] == host and _alive(int(m["pid"])):
                continue
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                continue
            if m["host"] != host and age < _FOREIGN_TMP_AGE_S:
                continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d unfinished export(s) in %s", len(removed), root)
    return removed


def _write_setup_files(adapter: Adapter) -> None:
    """Write the family's ``Adapter.setup_files`` into the model folder where they differ."""
    for name, content in adapter.setup_files().items():
        path = adapter.model_dir / name
        try:
            if path.is_file() and path.read_text() == content:
                continue
            tmp = path.with_name(path.name + ".asrctl-tmp")
            tmp.write_text(content)
            tmp.replace(path)
        except OSError as e:  # a read-only model folder still works; the file is optional
            log.warning("cannot write %s: %s", path, e)


def replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old ``target`` is removed only after the move."""
    trash = target.with_name(target.name + ".old")
    shutil.rmtree(trash, ignore_errors=True)
    if target.exists():
        target.rename(trash)
    new.rename(target)
    shutil.rmtree(trash, ignore_errors=True)


def _write_manifest(root: Path, family: str, sources: list[dict]) -> None:
    manifest = {"format": EXPORT_FORMAT, "family": family, "sources": sources}
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(root / "manifest.json")


def prepare(
    model_dir: str | Path,
    *,
    cache_dir: Path | None = None,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> PreparedModel:
    """Validate ``model_dir``, detect its family and make sure its LLM export is current."""
    return export_llm(load_adapter(model_dir), cache_dir=cache_dir, force=force, on_step=on_step)
