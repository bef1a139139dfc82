"""Tests for asrctl.server.options: the server's settings, checked once."""

from __future__ import annotations

import pytest

from asrctl.errors import OptionsError
from asrctl.pipeline import ENCODER_BATCH_SECONDS
from asrctl.server.options import SERVER_ENCODER_BATCH_SIZE, ServerOptions


def test_encoder_passes_default_to_the_batch_paths_audio_budget() -> None:
    options = ServerOptions()
    assert options.encoder_batch_seconds == ENCODER_BATCH_SECONDS
    assert options.encoder_batch_size == SERVER_ENCODER_BATCH_SIZE
    assert ServerOptions(encoder_batch_seconds=1920).encoder_batch_seconds == 1920


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("encoder_batch_seconds", 0.5, "--encoder-batch-seconds must be at least 1"),
        ("encoder_batch_size", 0, "--encoder-batch-size must be at least 1"),
        ("port", 0, "--port must be 1-65535"),
    ],
)
def test_bad_settings_name_their_option(field: str, value: float, message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        ServerOptions(**{field: value})
