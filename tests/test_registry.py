"""A family is registered everywhere or nowhere: its adapter, its audio encoder contract and
its fixture generator (README, "Adding a model family")."""

from __future__ import annotations

import importlib

from asrctl.adapters.base import Adapter
from asrctl.adapters.registry import ADAPTERS, adapter_class
from asrctl.fixtures import GENERATORS


def test_every_adapter_has_a_fixture_generator_and_back() -> None:
    assert set(ADAPTERS) <= set(GENERATORS), "a registered family without a fixture generator"
    for name in GENERATORS:  # extra layouts of a family are named after it (vibevoice-asr-hf)
        assert any(name == f or name.startswith(f"{f}-") for f in ADAPTERS), name


def test_every_adapter_states_its_family_under_its_registered_name() -> None:
    for name in ADAPTERS:
        cls = adapter_class(name)
        assert issubclass(cls, Adapter) and cls.family.name == name
        assert cls.required, f"{name}: no required files to check a folder against"


def test_every_generator_module_has_make() -> None:
    for name, module in GENERATORS.items():
        assert callable(importlib.import_module(module).make), name
