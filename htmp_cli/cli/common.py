"""What every command shares: the typer app, the exit-code policy, one-line errors, the console,
and reading and writing the files commands name.

Exit codes: 0 success; 1 a gate failed; 2 usage error or unreadable input (one line on stderr, a
traceback only with --debug); 3 a scan finished with failures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from htmp_cli import __version__
from htmp_cli.errors import HtmpError

if TYPE_CHECKING:
    from htmp_cli.results import Report

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_SCAN_FAILURES = 0, 1, 2, 3

app = typer.Typer(
    name="htmp",
    help="Heavy-tail and random-matrix diagnostics for trained model weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain: "[analysis]" and "[tool.htmp]" are TOML tables, not rich markup.
    rich_markup_mode=None,
)


class StdoutConsole(Console):
    """rich exits with status 1 on a broken pipe, which here means "gate failed"; let ours handle it."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def stdout_console(piped_width: int) -> StdoutConsole:
    """The terminal's own width on a terminal; when piped, wide enough that rows do not fold."""
    console = StdoutConsole()
    return console if console.is_terminal else StdoutConsole(width=max(console.width, piped_width))


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"htmp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Heavy-tail and random-matrix diagnostics for trained model weights."""


def default_jobs() -> int:
    """The usable cores: the default worker count of the commands that analyse many checkpoints."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def fail(message: str) -> None:
    typer.echo(f"htmp: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def run_guarded(debug: bool, body):  # type: ignore[no-untyped-def]
    try:
        return body()
    except HtmpError as err:
        if debug:
            raise
        fail(str(err))
    except (typer.Exit, KeyboardInterrupt):
        raise
    except BrokenPipeError:
        # The reader went away (`htmp analyze ... | head`): nothing left to say, and nobody to say it to.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(EXIT_OK) from None
    except MemoryError:
        if debug:
            raise
        fail("out of memory")
    except Exception as err:  # a bug: say so in one line, the traceback is one flag away
        if debug:
            raise
        fail(f"internal error: {type(err).__name__}: {err} (run with --debug for the traceback)")


def flag_given(ctx: typer.Context, name: str) -> bool:
    """Whether a flag was given on the command line (rather than left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def read_report_file(path: Path, what: str) -> Report:
    """A saved report (`what` is the flag or word that named it), any fault said in one line naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HtmpError(f"{what} {path}: not a readable JSON report ({err})") from None
    from htmp_cli.results import SCHEMA, Report, is_report

    if not is_report(data):
        raise HtmpError(f"{what} {path}: not an htmp report (expected schema {SCHEMA!r})")
    try:
        return Report.from_dict(data)
    except HtmpError as err:  # the right schema, not the right shape
        raise HtmpError(f"{what} {path}: {err}") from None


def write_text(path: Path, text: str, flag: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise HtmpError(f"{flag} {path}: cannot write: {err.strerror or err}") from None


def open_output(output: Path):  # type: ignore[no-untyped-def]
    try:
        return open(output, "w", encoding="utf-8")
    except OSError as err:
        raise HtmpError(f"--output {output}: cannot write: {err.strerror or err}") from None

