"""The `deploy` command line: wires the pipeline's plain functions together and prints.

Every command runs inside ``deploy.commands.common.guarded()``: a ``ConvDeployError`` becomes one line on
stderr and its exit code (docs/architecture.md), anything else is a bug (exit 1) whose traceback
is shown with ``deploy --debug …``.
"""

from __future__ import annotations

import warnings

import typer

from deploy.commands import bench, claims, export, zoo
from deploy.commands.common import guarded, state, terminate_on_sigterm
from deploy.version import __version__

app = typer.Typer(
    name="deploy",
    help=(
        "Fold, export, verify and time CNNs built with CoC, DO-Conv, IC, SCConv and SPConv.\n\n"
        "Exit codes: 0 ok, 1 internal error, 2 bad input, 3 parity failed, 4 graph check failed, "
        "5 backend not available here, 6 a claim was refuted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"convdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state["debug"] = debug
    if not debug:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def _register() -> None:
    app.add_typer(zoo.app, name="zoo")
    for fn in (export.export, export.validate, export.inspect, bench.bench, bench.build, claims.claims):
        app.command(fn.__name__)(guarded(fn))


_register()


def main() -> None:
    """Console-script entry point."""
    terminate_on_sigterm()
    app()


if __name__ == "__main__":
    main()
