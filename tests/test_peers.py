"""Tests for benchmarks/peers.py: what each peer's process starts with."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402


def _args() -> argparse.Namespace:
    return argparse.Namespace(torchaudio_shim=False)


def test_peers_start_without_flashinfers_sampler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # round 12: its JIT compile at start-up outlasted both peers' time on a fresh machine
    monkeypatch.delenv("VLLM_USE_FLASHINFER_SAMPLER", raising=False)
    env, stubs = peers.peer_env(_args(), tmp_path, tmp_path / "stubs", "funasr")
    assert env["VLLM_USE_FLASHINFER_SAMPLER"] == "0" and stubs == []


def test_the_users_sampler_setting_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_USE_FLASHINFER_SAMPLER", "1")
    env, _ = peers.peer_env(_args(), tmp_path, tmp_path / "stubs", "funasr")
    assert env["VLLM_USE_FLASHINFER_SAMPLER"] == "1"
