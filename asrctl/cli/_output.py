"""Output: data to stdout, diagnostics (progress, summaries, errors) to stderr."""

from __future__ import annotations

from rich.console import Console

out = Console(soft_wrap=True, highlight=False)  # data
err = Console(stderr=True, highlight=False, soft_wrap=True)  # everything else


def data(line: str) -> None:
    """Write one line of data to stdout, unstyled and verbatim (rich would expand tabs)."""
    out.file.write(line + "\n")
    out.file.flush()


def info(message: str) -> None:
    err.print(message)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")


def error(message: str, hint: str | None = None) -> None:
    err.print(f"[bold red]Error:[/] {message}", markup=True)
    if hint:
        err.print(f"[dim]hint:[/] {hint}")
