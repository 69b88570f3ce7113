"""The `deploy` command line: wires the pipeline's plain functions together and prints.

The root group loads each command's module only when that command runs (``COMMANDS``): the
commands on ONNX files (``inspect``, ``bench``) and ``--version`` / ``--help`` start without
importing torch, while the torch-side commands may import it at their top. ``deploy --help``
and shell completion list the commands from the table without importing any of them.

Every command runs inside ``deploy.commands.common.guarded()``: a ``ConvDeployError`` becomes one line on
stderr and its exit code (docs/architecture.md), anything else is a bug (exit 1) whose traceback
is shown with ``deploy --debug …``.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any, NamedTuple, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from deploy.commands.common import configure_output, guarded, one_line_usage_errors, terminate_on_sigterm
from deploy.version import __version__


class CommandEntry(NamedTuple):
    """Where a command lives and the one line `deploy --help` shows for it (its docstring's first line)."""

    module: str
    attribute: str  # the command function, or the Typer app of a command group
    summary: str


#: every command, in the order `deploy --help` lists them
COMMANDS: dict[str, CommandEntry] = {
    "export": CommandEntry("deploy.commands.export", "export", "Fold MODEL.pt, export ONNX, simplify, check the "
                           "graph, prove parity; write OUT.onnx + report."),
    "validate": CommandEntry("deploy.commands.validate", "validate", "Prove MODEL.onnx computes what MODEL.pt "
                             "computes: training form vs folded vs ONNX Runtime."),
    "eval": CommandEntry("deploy.commands.eval", "eval_command", "Accuracy of an artifact on your images: top-1/top-5 "
                         "with 95 % intervals, images/s; --vs compares two."),
    "quantize": CommandEntry("deploy.commands.quantize", "quantize_command", "INT8 Q/DQ ONNX calibrated on your "
                             "images and gated on its accuracy against the fp32 model."),
    "inspect": CommandEntry("deploy.commands.inspect", "inspect", "What a file holds: .onnx interface, dtypes, ops, "
                            "params, MACs, verdict (--layers: every node); .pt arch, conv, params."),
    "bench": CommandEntry("deploy.commands.bench", "bench", "Time an artifact (or two, interleaved) and print latency "
                          "statistics."),
    "build": CommandEntry("deploy.commands.build", "build", "Compile model.onnx into a TensorRT engine (GPU + "
                          "TensorRT 10 or 11 needed; built with polygraphy)."),
    "triton": CommandEntry("deploy.commands.triton", "triton", "Write a Triton model repository for a checked .onnx "
                           "or .plan: config.pbtxt + the model, both or neither."),
    "serve": CommandEntry("deploy.commands.serve", "serve", "Serve a checked .onnx with a local tritonserver (Python "
                          "backend, ONNX Runtime) until Ctrl-C or SIGTERM."),
    "claims": CommandEntry("deploy.commands.claims", "claims", "Verify the papers' efficiency claims on this machine: "
                           "verdicts in DIR/claims.md (exit 6 if any is refuted)."),
    "matrix": CommandEntry("deploy.commands.matrix", "matrix", "One model in every format this machine can run: "
                           "status, size, parity, accuracy, latency (exit 3 if a row fails its gate)."),
    "zoo": CommandEntry("deploy.commands.zoo", "app", "The model zoo: ResNet-18/34/50/101, CIFAR ResNet-20 and "
                        "SCNet-50/101 with each paper's layer."),
}


def unwrap_help(command: Any) -> Any:
    """Join the docstring's wrapped lines into paragraphs (typer's rich help keeps every line
    break of the paragraphs after the first), for ``command`` and its subcommands."""
    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)
    for sub in getattr(command, "commands", {}).values():
        unwrap_help(sub)
    return command


def load_command(name: str) -> Any:
    """Import the module of command ``name`` and build its click command (guarded)."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    if isinstance(target, typer.Typer):
        return unwrap_help(typer.main.get_command(target))
    single = typer.Typer(add_completion=False)
    single.command(name)(guarded(target))
    return unwrap_help(typer.main.get_command(single))


class LazyGroup(TyperGroup):
    """A typer group whose commands are imported on first use.

    While it lists its commands (``deploy --help``, completing a command name) it hands out
    stand-ins that carry only the name and the table's summary; resolving a command to run,
    to show its own help or to complete its options imports the real one.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.listing = False
        self.loaded: dict[str, Any] = {}
        for name, entry in COMMANDS.items():  # stand-ins: typo suggestions and list_commands read self.commands
            self.commands[name] = TyperCommand(name, short_help=entry.summary, help=entry.summary)

    def get_command(self, ctx: Any, cmd_name: str) -> Optional[Any]:
        if cmd_name not in COMMANDS:
            return None
        if self.listing:
            return self.commands[cmd_name]
        if cmd_name not in self.loaded:
            self.loaded[cmd_name] = load_command(cmd_name)
        return self.loaded[cmd_name]

    def make_context(self, info_name: Optional[str], args: list[str], parent: Any = None, **extra: Any) -> Any:
        with one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with one_line_usage_errors():
            return super().invoke(ctx)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        self.listing = True
        try:
            return super().shell_complete(ctx, incomplete)
        finally:
            self.listing = False


app = typer.Typer(
    name="deploy",
    cls=LazyGroup,
    help=(
        "Fold, export, verify and time CNNs built with CoC, DO-Conv, IC, SCConv and SPConv.\n\n"
        "Every command: --json prints its machine-readable record on stdout (human text to stderr), "
        "--json-file PATH writes it to a file.\n\n"
        "Exit codes: 0 ok, 1 internal error, 2 bad input, 3 parity failed, 4 graph check failed, "
        "5 backend not available here, 6 a claim was refuted."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"convdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "-v", "--verbose", help="More detail: library warnings, the exporter's own "
                                 "messages."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only errors and warnings (and the JSON of --json)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if verbose and quiet:
        raise typer.BadParameter("give -v/--verbose or -q/--quiet, not both")
    configure_output(debug=debug, verbose=verbose, quiet=quiet)
    # the root options hold for this invocation only (the test runner invokes many in one process)
    ctx.call_on_close(lambda: configure_output(debug=False, verbose=False, quiet=False))
    if not (debug or verbose):
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def main() -> None:
    """Console-script entry point."""
    terminate_on_sigterm()
    app()


if __name__ == "__main__":
    main()
