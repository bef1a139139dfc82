"""The LLM export cache: contents, reuse, rebuilds, atomicity, location, and `asrctl setup`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from clirun import run_asrctl

from asrctl.adapters.fun_asr_nano import FunAsrNanoAdapter
from asrctl.export import prepare
from asrctl.fixtures import make_fixture

LLM = "Qwen3-0.6B"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)


@pytest.fixture(autouse=True)
def _no_cache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASRCTL_CACHE", raising=False)


def _llm_state(model_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]
    return {k.removeprefix("llm."): v for k, v in state.items() if k.startswith("llm.")}


def _weights(llm_dir: Path) -> Path:
    return llm_dir / "model.safetensors"


def _assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def test_export_contents(fun_asr_copy: Path) -> None:
    prepared = prepare(fun_asr_copy)
    assert prepared.reused is False
    assert prepared.family == "fun-asr-nano"
    assert prepared.model_dir == fun_asr_copy.resolve()
    assert prepared.llm_dir == fun_asr_copy.resolve() / ".asrctl" / "llm"
    config = json.loads((prepared.llm_dir / "config.json").read_text())
    source = json.loads((fun_asr_copy / LLM / "config.json").read_text())
    dtype = source.get("dtype") or source["torch_dtype"]  # both spellings, one value
    expected = {**source, "architectures": ["Qwen3ForCausalLM"], "dtype": dtype}
    assert config == expected | {"torch_dtype": dtype}
    for name in TOKENIZER_FILES:
        assert (prepared.llm_dir / name).read_bytes() == (fun_asr_copy / LLM / name).read_bytes()
    exported = load_file(_weights(prepared.llm_dir))
    assert "lm_head.weight" in exported and "model.embed_tokens.weight" in exported
    _assert_same_tensors(exported, _llm_state(fun_asr_copy))


def test_manifest_hashes_sources(fun_asr_copy: Path) -> None:
    prepare(fun_asr_copy)
    manifest = json.loads((fun_asr_copy / ".asrctl" / "manifest.json").read_text())
    assert manifest["family"] == "fun-asr-nano"
    sources = {s["path"]: s for s in manifest["sources"]}
    assert {"model.pt", f"{LLM}/config.json", f"{LLM}/tokenizer.json"} <= sources.keys()
    for path, rec in sources.items():
        data = (fun_asr_copy / path).read_bytes()
        assert rec["sha256"] == hashlib.sha256(data).hexdigest(), path
        assert rec["size"] == len(data)


def test_second_call_reuses(fun_asr_copy: Path) -> None:
    first = prepare(fun_asr_copy)
    before = _weights(first.llm_dir).stat()
    second = prepare(fun_asr_copy)
    assert second.reused is True and second.llm_dir == first.llm_dir
    after = _weights(second.llm_dir).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_touched_source_is_reused(fun_asr_copy: Path) -> None:
    first = prepare(fun_asr_copy)
    before = _weights(first.llm_dir).stat()
    model_pt = fun_asr_copy / "model.pt"
    stat = model_pt.stat()
    os.utime(model_pt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))
    assert prepare(fun_asr_copy).reused is True
    assert _weights(first.llm_dir).stat().st_ino == before.st_ino
    manifest = json.loads((fun_asr_copy / ".asrctl" / "manifest.json").read_text())
    rec = next(s for s in manifest["sources"] if s["path"] == "model.pt")
    assert rec["mtime_ns"] == model_pt.stat().st_mtime_ns  # refreshed: no re-hash next time


def test_changed_source_rebuilds(tmp_path: Path, fun_asr_copy: Path) -> None:
    first = prepare(fun_asr_copy)
    old = load_file(_weights(first.llm_dir))
    other = make_fixture("fun-asr-nano", tmp_path / "seed1", seed=1)
    shutil.copyfile(other / "model.pt", fun_asr_copy / "model.pt")
    second = prepare(fun_asr_copy)
    assert second.reused is False
    new = load_file(_weights(second.llm_dir))
    _assert_same_tensors(new, _llm_state(other))
    assert not torch.equal(new["model.norm.weight"], old["model.norm.weight"])


def test_force_rebuilds(fun_asr_copy: Path) -> None:
    first = prepare(fun_asr_copy)
    before = _weights(first.llm_dir).stat()
    forced = prepare(fun_asr_copy, force=True)
    assert forced.reused is False
    assert _weights(forced.llm_dir).stat().st_ino != before.st_ino
    _assert_same_tensors(load_file(_weights(forced.llm_dir)), _llm_state(fun_asr_copy))


def test_shared_tied_weights_export(fun_asr_copy: Path) -> None:
    """A model.pt saved from a tied model stores lm_head and embed_tokens as one storage."""
    state = torch.load(fun_asr_copy / "model.pt", weights_only=True)["state_dict"]
    state["llm.lm_head.weight"] = state["llm.model.embed_tokens.weight"]
    torch.save({"state_dict": state}, fun_asr_copy / "model.pt")
    exported = load_file(_weights(prepare(fun_asr_copy).llm_dir))
    assert torch.equal(exported["lm_head.weight"], exported["model.embed_tokens.weight"])
    _assert_same_tensors(exported, _llm_state(fun_asr_copy))


def test_failed_export_keeps_previous(fun_asr_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = prepare(fun_asr_copy)
    root = fun_asr_copy / ".asrctl"
    weights = _weights(first.llm_dir).read_bytes()
    manifest = (root / "manifest.json").read_text()
    real = FunAsrNanoAdapter.llm_tensors

    def failing(self):
        tensors = real(self)
        yield next(tensors)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(FunAsrNanoAdapter, "llm_tensors", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare(fun_asr_copy, force=True)
    assert sorted(p.name for p in root.iterdir()) == ["llm", "manifest.json"]
    assert _weights(first.llm_dir).read_bytes() == weights
    assert (root / "manifest.json").read_text() == manifest
    monkeypatch.undo()
    assert prepare(fun_asr_copy).reused is True


@pytest.mark.parametrize("where", ["cache_dir", "ASRCTL_CACHE", "home"])
def test_read_only_model_dir_uses_cache(
    tmp_path: Path, fun_asr_copy: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    real_access, model_dir = os.access, fun_asr_copy.resolve()

    def access(path, mode, *args, **kwargs) -> bool:  # root may write anywhere: fake 0o555
        return Path(path) != model_dir and real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    cache = tmp_path / "cache"
    kwargs = {}
    if where == "cache_dir":
        kwargs["cache_dir"] = cache
    elif where == "ASRCTL_CACHE":
        monkeypatch.setenv("ASRCTL_CACHE", str(cache))
    else:
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        cache = tmp_path / "home" / ".cache" / "asrctl"
    prepared = prepare(fun_asr_copy, **kwargs)
    assert prepared.llm_dir.parent.parent == cache
    assert _weights(prepared.llm_dir).is_file()
    assert not (fun_asr_copy / ".asrctl").exists()
    assert prepare(fun_asr_copy, **kwargs).reused is True


def test_cli_setup(fun_asr_copy: Path) -> None:
    proc = run_asrctl("setup", str(fun_asr_copy), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "family\tfun-asr-nano",
        f"model_dir\t{fun_asr_copy.resolve()}",
        f"llm_dir\t{fun_asr_copy.resolve() / '.asrctl' / 'llm'}",
        f"vllm_dir\t{fun_asr_copy.resolve() / '.asrctl' / 'vllm'}",  # the vLLM plugin's
    ]
    assert _weights(fun_asr_copy / ".asrctl" / "llm").is_file()


def test_cli_setup_broken_dir(fun_asr_copy: Path) -> None:
    (fun_asr_copy / "model.pt").unlink()
    proc = run_asrctl("setup", str(fun_asr_copy), timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert "missing required file: model.pt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (fun_asr_copy / ".asrctl").exists()
