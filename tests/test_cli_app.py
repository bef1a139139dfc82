"""The command table of ``asrctl``: help texts render as written."""

from __future__ import annotations

import inspect

import pytest

from asrctl.cli.app import app

COMMANDS = {info.callback.__name__: info.callback for info in app.registered_commands}


def test_every_command_is_registered():
    assert sorted(COMMANDS) == ["bench", "serve", "setup", "transcribe", "verify"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_paragraphs_are_not_hard_wrapped(name):
    # --help prints a docstring's line breaks as they are, so a paragraph wrapped in the
    # source comes out broken mid-sentence in the terminal.
    doc = inspect.cleandoc(COMMANDS[name].__doc__ or "")
    assert doc, f"{name} has no help text"
    for paragraph in doc.split("\n\n"):
        assert "\n" not in paragraph, f"{name}: {paragraph!r}"
        assert "``" not in paragraph, f"{name}: reST markup shows literally: {paragraph!r}"
