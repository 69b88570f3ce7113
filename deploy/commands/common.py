"""What every command shares: consoles, the error guard, the --debug state."""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

from deploy.errors import ConvDeployError

console = Console()
err_console = Console(stderr=True)
state = {"debug": False}


def guarded(fn: Callable) -> Callable:
    """Turn ConvDeployError into its exit code and a one-line message; hide tracebacks.

    Anything else is a bug: exit 1 with a hint to rerun with ``deploy --debug``. With
    ``--debug`` the traceback is printed too, and the exit code stays the error's own.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConvDeployError as exc:
            if state["debug"]:
                err_console.print_exception()
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if state["debug"]:
                raise
            err_console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
                "(a bug in convdeploy; rerun with `deploy --debug …` for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper
