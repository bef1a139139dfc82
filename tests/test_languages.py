"""Language names and codes as clients send them (asrctl.languages)."""

from __future__ import annotations

import pytest

from asrctl.languages import normalize


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("English", "en"), ("english", "en"), ("中文", "zh"), ("普通话", "zh"), ("zh-CN", "zh"),
        ("en_US", "en"), ("JA", "ja"), ("粤语", "yue"), (" ko ", "ko"), ("auto", None), ("", None),
        (None, None), ("Klingon", "Klingon"),
    ],
)  # fmt: skip
def test_names_and_codes(given: str | None, code: str | None) -> None:
    assert normalize(given) == code
