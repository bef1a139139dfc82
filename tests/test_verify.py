"""``asrctl verify``: the environment passes here; broken model directories are caught.

No engine is started here (``--smoke`` is in test_verify_smoke.py). The CLI runs in
process, so torch and vLLM are imported once for the module.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from asrctl import verify
from asrctl.cli import _output
from asrctl.cli.app import app
from asrctl.errors import OptionsError
from asrctl.export import prepare


@pytest.fixture(autouse=True)
def wide_tables(monkeypatch):
    """Rich folds table cells at 80 columns off a terminal; keep each cell on one line."""
    monkeypatch.setattr(_output.out, "width", 400)
    monkeypatch.setattr(_output.err, "width", 400)


def run_verify(*args: str):
    return CliRunner().invoke(app, ["verify", *args])


def by_name(checks) -> dict[str, verify.Check]:
    return {c.name: c for c in checks}


def test_environment_checks_pass_here():
    result = run_verify()
    assert result.exit_code == 0, result.output
    for name in ("python", "torch", "vllm", "soundfile", "av", "soxr", "jiwer"):
        assert any(line.split("│")[1].strip() == name for line in _rows(result.output)), name
    assert " fail " not in result.output
    checks = by_name(verify.environment_checks())
    assert checks["vllm"].status == "ok" and "tested" in checks["vllm"].detail


def _rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.count("│") >= 4]


def test_a_good_model_directory_passes(fun_asr_copy):
    prepare(fun_asr_copy)
    checks = by_name(verify.model_checks(fun_asr_copy))
    assert {c.status for c in checks.values()} == {"ok"}, checks
    assert "<|im_end|>" in checks["tokenizer"].detail
    result = run_verify("--model", str(fun_asr_copy))
    assert result.exit_code == 0, result.output


def test_layout_and_tensor_groups_are_reported(fun_asr_copy):
    check = by_name(verify.model_checks(fun_asr_copy))["layout"]
    assert check.status == "ok"
    assert "FunASR release" in check.detail
    for group in ("audio_encoder (", "audio_adaptor (", "llm ("):
        assert group in check.detail, check.detail
    result = run_verify("--model", str(fun_asr_copy))
    [row] = [r for r in _rows(result.output) if r.split("│")[1].strip() == "layout"]
    assert "FunASR release" in row and " ok " in row


def test_no_export_yet_is_a_warning(fun_asr_copy):
    check = by_name(verify.model_checks(fun_asr_copy))["LLM export"]
    assert check.status == "warn" and "asrctl setup" in check.fix


def _fails(model_dir: Path, name: str, *texts: str) -> verify.Check:
    """Assert verify exits 1 naming check ``name`` and ``texts``; return the check."""
    check = by_name(verify.model_checks(model_dir))[name]
    assert check.status == "fail", check
    result = run_verify("--model", str(model_dir))
    assert result.exit_code == 1, result.output
    row = next(line for line in _rows(result.output) if line.split("│")[1].strip() == name)
    assert " fail " in row
    for text in texts:
        assert text in check.detail + check.fix and text in result.output
    return check


def test_missing_file_is_named(fun_asr_copy):
    (fun_asr_copy / "Qwen3-0.6B" / "tokenizer.json").unlink()
    check = _fails(fun_asr_copy, "required files", "Qwen3-0.6B/tokenizer.json")
    assert "restore the released files" in check.fix


def test_broken_symlink_names_its_target(fun_asr_copy, tmp_path):
    config = fun_asr_copy / "Qwen3-0.6B" / "config.json"
    moved = tmp_path / "elsewhere" / "config.json"
    moved.parent.mkdir()
    shutil.move(config, moved)
    config.symlink_to(moved)
    assert by_name(verify.model_checks(fun_asr_copy))["symlinks"].status == "ok"
    shutil.rmtree(moved.parent)
    check = _fails(fun_asr_copy, "symlinks", f"Qwen3-0.6B/config.json → {moved} (missing)")
    assert "link" in check.fix


def test_tensor_shape_mismatch_is_caught(fun_asr_copy):
    path = fun_asr_copy / "model.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    hidden, ffn = state["audio_adaptor.linear2.weight"].shape
    state["audio_adaptor.linear2.weight"] = torch.zeros(hidden + 8, ffn, dtype=torch.bfloat16)
    torch.save({"state_dict": state}, path)
    check = _fails(
        fun_asr_copy,
        "tensor shapes",
        f"audio_adaptor.linear2.weight has shape ({hidden + 8}, {ffn}), expected ({hidden}, {ffn})",
    )
    assert "LLM hidden size" in check.detail and "same release" in check.fix


def test_stale_export_is_caught(fun_asr_copy):
    prepare(fun_asr_copy)
    config = fun_asr_copy / "Qwen3-0.6B" / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps"', '"rms_norm_eps" '))
    check = _fails(fun_asr_copy, "LLM export", "stale", "asrctl setup")
    assert "Qwen3-0.6B/config.json changed" in check.detail
    prepare(fun_asr_copy)
    assert by_name(verify.model_checks(fun_asr_copy))["LLM export"].status == "ok"


def test_broken_torchvision_beside_torch_fails_with_the_fix(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ImportError('libtorchvision.so: undefined symbol: _ZN3c10')\n"
    )
    monkeypatch.syspath_prepend(str(fake.parent))
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))  # the child process sees it too
    check = verify.check_wheel_traps()
    assert check.status == "fail"
    assert "torchvision" in check.detail and "undefined symbol" in check.detail
    assert check.fix == "pip uninstall torchvision torchaudio torchcodec"
    sys.modules.pop("torchvision", None)


def test_smoke_needs_a_model():
    result = run_verify("--smoke")
    assert isinstance(result.exception, OptionsError)
