"""Output: data to stdout, diagnostics (progress, summaries, errors) to stderr.

Messages are printed literally: keys, paths and error texts come from users and files, so
neither console reads rich markup (``[x]``) or emoji codes (``:100:``) in strings. Style
goes in with :class:`rich.text.Text` (``info(msg, style=...)``, the prefixes below).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.status import Status
from rich.text import Text

out = Console(soft_wrap=True, highlight=False, markup=False, emoji=False)  # data
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


def literal(message: str, style: str = "") -> Text:
    """``message`` as printed verbatim (for rich widgets that would parse a str: status)."""
    return Text(message, style=style)


def steps(status: Status) -> Callable[[str], None]:
    """A callback showing each step message on ``status``, verbatim."""
    return lambda message: status.update(literal(message))


def data(line: str) -> None:
    """Write one line of data to stdout, unstyled and verbatim (rich would expand tabs)."""
    out.file.write(line + "\n")
    out.file.flush()


def info(message: str, style: str = "") -> None:
    err.print(literal(message, style))


def ok(message: str) -> None:
    err.print(Text.assemble(("ok", "green"), " ", message))


def warn(message: str) -> None:
    err.print(Text.assemble(("warning:", "yellow"), " ", message))


def error(message: str, hint: str | None = None) -> None:
    err.print(Text.assemble(("Error:", "bold red"), " ", message))
    if hint:
        err.print(Text.assemble(("hint:", "dim"), " ", hint))
