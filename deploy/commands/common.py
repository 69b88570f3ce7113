"""What every command shares: consoles, the error guard, the root options' state, machine output.

Library errors name the Python parameters they are about in backticks (`` `input_size` ``);
the guard translates those into the command line's flags (``--input-size``) before it
prints the one-line message, so the same library serves both audiences.

Output rule (README "Output"): human text goes to ``console`` (stdout; silenced by ``deploy -q``);
errors and warnings go to stderr. A command's machine-readable record goes to stdout with
``--json`` (the human text then moves to stderr) and to a file with ``--json-file PATH``.

This module is torch-free: ``deploy --version``, ``deploy inspect x.onnx`` and ``deploy bench
x.onnx`` import it and must start without torch (the conv-kind options are in
``deploy.commands.source_options``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

import rich
import typer
from rich.console import Console
from rich.markup import escape

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # older typer runs on click itself
    from click.exceptions import UsageError  # type: ignore[no-redef]

from deploy.core.atomic import Terminated, write_json_atomic
from deploy.core.errors import ConvDeployError
from deploy.core.pathguard import guard_paths

console = Console(emoji=False)  # a module called `a:smile:b` stays as it is
err_console = Console(stderr=True, emoji=False)
#: the root options of this invocation (`deploy --debug -v|-q COMMAND …`)
state = {"debug": False, "verbose": False, "quiet": False}

#: library parameter names -> the flag that sets them
FLAGS = {
    "arch": "--arch", "atol": "--atol", "backend": "--backend", "batch": "--batch", "batches": "--batch",
    "channels_last": "--channels-last", "conv": "--conv", "conv_kwargs": "--conv-opt", "cuda_graph": "--cuda-graph",
    "device": "--device", "dtype": "--dtype", "duration": "--duration", "dynamic": "--dynamic", "exporter": "--exporter",
    "fold": "--fold", "fp16": "--fp16", "input_shape": "--input-shape", "input_size": "--input-size", "iters": "--iters",
    "max_batch": "--max-batch", "max_size": "--max-size", "min_batch": "--min-batch", "min_size": "--min-size",
    "model_args": "--model-args", "model_class": "--model-class", "models": "--models", "opt_batch": "--opt-batch",
    "opt_size": "--opt-size", "output": "--output", "provider": "--provider", "rtol": "--rtol", "samples": "--samples",
    "strict_fold": "--strict-fold", "tf32": "--tf32", "threads": "--threads", "timing_cache": "--timing-cache",
    "trust_pickle": "--trust-pickle", "warmup": "--warmup", "workspace": "--workspace", "report": "--report",
    "engine": "--engine", "json_file": "--json-file", "vs": "--vs",
    "name": "--name", "instances": "--instances", "kind": "--kind", "preferred_batch": "--preferred-batch",
    "queue_delay_us": "--queue-delay-us", "ort_tensorrt": "--ort-trt", "port": "--port", "triton_env": "--triton-env",
    "repository": "--repository",
    "include_copies": "--include-copies", "seed": "--seed", "opset": "--opset", "output_dir": "--output",
    "preprocess": "--preprocess", "classes": "--classes", "limit": "--limit", "sample": "--sample",
    "calib": "--calib", "eval": "--eval", "target": "--target", "method": "--method", "max_drop": "--max-drop",
    "keep_float": "--keep-float", "auto_keep": "--keep-float auto", "max_kept": "--keep-float-max",
    "calib_limit": "--calib-limit", "eval_limit": "--eval-limit", "allow_unfolded": "--allow-unfolded",
    "formats": "--formats", "margin": "--margin", "eval_batch": "--eval-batch",
}
_PARAM = re.compile(r"`([a-z_0-9]+)`")

F = TypeVar("F", bound=Callable[..., Any])


def cli_message(text: str) -> str:
    """A library message with its `` `parameter` `` names replaced by the flags that set them."""
    return _PARAM.sub(lambda m: FLAGS.get(m.group(1), m.group(0)), text)


def guarded(fn: F) -> F:
    """Turn ConvDeployError into its exit code and a one-line message; hide tracebacks.

    Anything else is a bug: exit 1 with a hint to rerun with ``deploy --debug``. With
    ``--debug`` the traceback is printed too, and the exit code stays the error's own.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConvDeployError as exc:
            if state["debug"]:
                err_console.print_exception()
            err_console.print(f"[bold red]error:[/] {escape(cli_message(str(exc)))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/] (SIGINT): every output is either complete or untouched",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Terminated:
            err_console.print("[bold red]terminated[/] (SIGTERM): every output is either complete or untouched",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(143) from None
        except (typer.Exit, typer.Abort):
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

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def one_line_usage_errors() -> Iterator[None]:
    """Usage errors (an unknown option, a bad value, a missing argument) as one ``error:`` line
    naming the command's ``--help``, exit 2, instead of typer's usage box."""
    try:
        yield
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `deploy` alone: the help was the answer
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}{hint}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def finite(value: Optional[float]) -> Optional[float]:
    """A typer callback for float options: NaN and infinity are refused while parsing (exit 2)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def terminate_on_sigterm() -> None:
    """SIGTERM (timeout, docker stop, CI cancellation) raises ``Terminated`` in the main thread, so
    temporary files are removed as on SIGINT; the guard exits 143."""
    def handler(_signum: int, _frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------- root options and the output rule

def configure_output(*, debug: bool, verbose: bool, quiet: bool) -> None:
    """Set the root options for this invocation: ``quiet`` silences the human text (errors and
    warnings still print), ``verbose`` asks commands for their details."""
    state.update(debug=debug, verbose=verbose, quiet=quiet)
    console.quiet = quiet
    rich.get_console().quiet = quiet  # the library's progress bars draw on rich's global console


def warn(text: str) -> None:
    """One warning line on stderr (kept by ``-q``: a warning is not chatter)."""
    err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


def detail(text: str) -> None:
    """A line only ``deploy -v`` shows."""
    if state["verbose"]:
        console.print(text, highlight=False, soft_wrap=True, markup=False)


class MachineOutput:
    """Where a command's record goes: ``emit(record)`` keeps it until the command ends."""

    def __init__(self, as_json: bool, json_file: Optional[Path]) -> None:
        self.as_json, self.json_file = as_json, json_file
        self.record: Optional[Any] = None

    @property
    def wanted(self) -> bool:
        """Whether anyone will read the record (build it only then when it costs something)."""
        return self.as_json or self.json_file is not None

    def emit(self, record: Any) -> None:
        self.record = record


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Everything printed to stdout goes to stderr while the block runs: ``sys.stdout``, and in a real
    process file descriptor 1 itself (a model's module or a native library may write there directly)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd != 1:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def machine_output(as_json: bool, json_file: Optional[Path],
                   reads: Optional[Mapping[str, Optional[Path]]] = None) -> Iterator[MachineOutput]:
    """The ``--json`` / ``--json-file`` rule around a command's body.

    With ``as_json`` everything the body prints to stdout (our tables, progress, any library's
    print) goes to stderr instead, so stdout holds exactly one JSON document: the emitted record,
    written when the body ends, also when it then fails (validate's parity report before exit 3).
    ``json_file`` is checked before any work against the files the command ``reads`` (label ->
    path, as for ``guard_paths``) and written atomically.
    """
    guard_paths(inputs=reads or {}, outputs={"`json_file`": json_file})
    out = MachineOutput(as_json, json_file)
    stdout = sys.stdout
    try:
        with stdout_to_stderr() if as_json else contextlib.nullcontext():
            yield out
    finally:
        if out.record is not None:
            if json_file is not None:
                write_json_atomic(json_file, out.record)
                console.print(f"wrote {json_file}", highlight=False, soft_wrap=True, markup=False)
            if as_json:
                stdout.write(json.dumps(out.record, indent=2, default=str) + "\n")
                stdout.flush()
