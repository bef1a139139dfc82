"""The ``asrctl`` application: wiring only."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import click
import typer

from asrctl import __version__
from asrctl.cli import _errors, _output
from asrctl.cli.bench import bench
from asrctl.cli.serve import serve
from asrctl.cli.setup import setup
from asrctl.cli.transcribe import transcribe
from asrctl.cli.verify import verify
from asrctl.errors import AsrctlError

app = typer.Typer(
    name="asrctl",
    no_args_is_help=True,
    add_completion=False,
    help="Prepare, run and measure LLM-based speech recognition models on vLLM.",
)

app.command(epilog="Example: asrctl setup ~/models/Fun-ASR-Nano-2512")(setup)
app.command(
    epilog="Example: asrctl transcribe data/test/wav.scp -m ~/models/Fun-ASR-Nano-2512 -o out/test"
)(transcribe)
app.command(epilog="Example: asrctl serve -m ~/models/Fun-ASR-Nano-2512 --port 8000")(serve)
app.command(epilog="Example: asrctl bench data/test -m ~/models/Fun-ASR-Nano-2512")(bench)
app.command(epilog="Example: asrctl verify --model ~/models/Fun-ASR-Nano-2512 --smoke")(verify)


def _version(value: bool) -> None:
    if value:
        _output.data(f"asrctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show library and vLLM logs.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    if debug:
        os.environ["ASRCTL_DEBUG"] = "1"
    # vLLM logs to stdout by default; keep stdout for data.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    """Console-script entry point: run the app, mapping errors to messages and exit codes."""
    try:
        code = app(standalone_mode=False)
    except AsrctlError as e:
        if _errors.debug_enabled():
            raise
        sys.exit(_errors.report(e))
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _output.error("interrupted")
        sys.exit(130)
    except Exception as e:
        death = _errors.engine_death(e)
        if death is None or _errors.debug_enabled():
            raise
        sys.exit(_errors.report(death))
    sys.exit(code if isinstance(code, int) else 0)
