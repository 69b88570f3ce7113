"""What every command shares: consoles, the error guard, the --debug state, conv-kind options.

Library errors name the Python parameters they are about in backticks (`` `input_size` ``);
the guard translates those into the command line's flags (``--input-size``) before it
prints the one-line message, so the same library serves both audiences.
"""

from __future__ import annotations

import functools
import math
import re
import signal
from typing import Any, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from deploy.atomic import Terminated
from deploy.errors import BadInputError, ConvDeployError
from deploy.layers.registry import conv_kind, conv_kinds

console = Console()
err_console = Console(stderr=True)
state = {"debug": False}

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
    "engine": "--engine", "json_out": "--json", "seed": "--seed", "opset": "--opset", "output_dir": "--output",
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


# ---------------------------------------------------------------- conv kinds on the command line

def conv_help(what: str = "Conv kind") -> str:
    """``--conv`` help listing the registered kinds."""
    return f"{what}: {', '.join(k.name for k in conv_kinds())}."


def conv_opt_help() -> str:
    """``--conv-opt`` help listing each kind's options."""
    kinds = "; ".join(f"{k.name}: {', '.join(o.name for o in k.options)}" for k in conv_kinds() if k.options)
    return f"Option of the conv kind, KEY=VALUE, repeatable (typed and checked). Options per kind — {kinds}."


def ratio_help() -> str:
    """``--ratio`` help: the alias, and which kinds take a ratio."""
    owners = [f"{k.name} ({k.option('ratio').help})" for k in conv_kinds() if any(o.name == "ratio" for o in k.options)]
    return f"Alias for --conv-opt ratio=R: {', '.join(owners) or 'no registered kind takes a ratio'}."


def conv_options(conv: Optional[str], items: Optional[list[str]], ratio: Optional[float]) -> dict[str, Any]:
    """``--conv-opt KEY=VALUE`` (and the ``--ratio`` alias) -> the kind's typed options."""
    raw: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInputError(f"--conv-opt {item!r}: give KEY=VALUE, e.g. --conv-opt ratio=0.25")
        if key in raw:
            raise BadInputError(f"--conv-opt {key} is given twice: give each option once")
        raw[key] = value
    if ratio is not None:
        if "ratio" in raw:
            raise BadInputError("--ratio and --conv-opt ratio=… both given: give one")
        raw["ratio"] = repr(ratio)
    if conv is None:
        if raw:
            raise BadInputError("--conv-opt/--ratio need --conv (they describe the conv kind's options)")
        return {}
    return conv_kind(conv).parse_options(raw)
