"""The `htmp` command line: thin typed commands over the library, one exit-code policy.

`common` holds the app and what every command shares, `flags` the analysis flags; `analyze`,
`figures`, `scan` and `trajectory` register their commands on the app when imported, here.
"""

from __future__ import annotations

import sys

import typer

from htmp_cli.cli import advise, analyze, figures, scan, trajectory  # noqa: F401  (registers the commands)
from htmp_cli.cli.common import EXIT_OK, EXIT_USAGE, app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: runs the app and turns usage errors into one line on stderr and exit 2."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("htmp: aborted", err=True)
        sys.exit(130)
    except Exception as err:
        # typer vendors click privately; its usage errors are recognised by their interface.
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        if type(err).__name__ == "NoArgsIsHelpError":
            typer.echo(err.format_message(), err=True)
            sys.exit(EXIT_USAGE)
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        # typer validates through pydantic, whose messages start "Value error, "; the option name says it.
        message = " ".join(err.format_message().split()).replace("Value error, ", "").rstrip(".")
        typer.echo(f"htmp: error: {message}{hint}", err=True)
        sys.exit(EXIT_USAGE if err.exit_code in (None, 0, 1, 2) else err.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
