"""The input shape a model is exported and checked at, settled against the model itself: the
shape it records or the user gives, its input channels, an ExportedProgram's static dims, a probe
forward pass whose failure names the real problem (channels, dtype, size, several inputs), and the
second size of dynamic H/W.
"""

from __future__ import annotations

import inspect
import re
from typing import Sequence

import torch
import torch.fx
from torch import nn

from deploy.core.errors import BadInputError, first_line
from deploy.core.limits import MAX_INPUT_ELEMENTS, MAX_SIDE
from deploy.core.outputs import flatten_outputs
from deploy.core.shapes import parse_batch, parse_dynamic, parse_input_shape, parse_input_size, second_size
from deploy.load.module import LoadedModel


def resolve_input_shape(loaded: LoadedModel, input_size: str | int | Sequence[int] | None = None,
                        input_shape: str | Sequence[int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) from ``input_shape``, else ``input_size`` (H or HxW) with the model's channels,
    else the checkpoint's; an error that says what to give when none of them is known."""
    if input_size is not None and input_shape is not None:
        raise BadInputError("give `input_size` (H or HxW) or `input_shape` (CxHxW), not both")
    full = parse_input_shape(input_shape)
    if full is not None:
        return full
    size = parse_input_size(input_size)
    shape = loaded.input_shape
    if shape is None:
        channels = input_channels(loaded)
        if channels is None:
            raise BadInputError("the model does not record its input shape and its input channels cannot be told "
                                "from it: give `input_shape` (CxHxW)")
        if size is None:
            raise BadInputError(f"the model does not record its input shape: give `input_size` (H or HxW; it takes "
                                f"{channels} channels) or `input_shape` (CxHxW)")
        return (channels, *size)
    if size is not None:
        return (int(shape[0]), *size)
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def input_channels(loaded: LoadedModel) -> int | None:
    """The channels the model's input has: an ExportedProgram's static dim, else the first ``nn.Conv2d``
    the forward pass calls (torch.fx), else the first one registered; None when there is none."""
    dims = loaded.program_dims
    if dims is not None and len(dims) == 4 and dims[1] is not None:
        return int(dims[1])
    convs = {name: m for name, m in loaded.model.named_modules() if isinstance(m, nn.Conv2d)}
    try:
        graph = torch.fx.symbolic_trace(loaded.model).graph
        called = [str(n.target) for n in graph.nodes if n.op == "call_module" and str(n.target) in convs]
    except Exception:  # noqa: BLE001 - fx raises many types on untraceable code; registration order is the fallback
        called = []
    first = convs[called[0]] if called else next(iter(convs.values()), None)
    return int(first.in_channels) if first is not None else None


def program_axes(loaded: LoadedModel, batch: str | int | None, dynamic: str | None) -> tuple[int | None, bool]:
    """``parse_dynamic``, reconciled with the dims an ExportedProgram was exported with: its graph
    runs only at a static batch N (which becomes the default) and cannot make static H/W dynamic."""
    fixed, dynamic_hw = parse_dynamic(dynamic, batch)
    dims = loaded.program_dims
    if dims is None or len(dims) != 4:
        return fixed, dynamic_hw
    if dims[0] is not None:
        asked_dynamic = dynamic is not None and "batch" in dynamic.lower()
        if asked_dynamic or (parse_batch(batch) is not None and fixed != dims[0]):
            raise BadInputError(f"the ExportedProgram was exported with a static batch of {dims[0]}: export it with "
                                f"`batch` {dims[0]}, or re-export it with a dynamic batch dim (torch.export.Dim)")
        fixed = dims[0]
    if dynamic_hw and None not in dims[2:]:
        raise BadInputError("the ExportedProgram was exported with a static H and W: drop `dynamic` hw, or "
                            "re-export it with dynamic height/width dims (torch.export.Dim)")
    return fixed, dynamic_hw


def check_second_size(model: nn.Module, input_shape: Sequence[int], batch: int = 1) -> None:
    """Parity of a graph with dynamic H/W also runs at ``second_size``: it must fit the limits, and the
    model must run there (a Flatten+Linear head fixes H and W)."""
    h, w = second_size(input_shape)
    if max(h, w) > MAX_SIDE or batch * int(input_shape[0]) * h * w > MAX_INPUT_ELEMENTS:
        raise BadInputError(f"with dynamic H/W, parity also runs at twice the input size ({h}x{w}), above what "
                            f"convdeploy runs ({MAX_SIDE} pixels a side, {MAX_INPUT_ELEMENTS:,} elements): choose a "
                            "smaller `input_size` or drop hw from `dynamic`")
    try:
        probe_forward(model, (int(input_shape[0]), h, w))
    except BadInputError as exc:
        cause = exc.__cause__ or exc
        reason = first_line(cause)
        raise BadInputError(f"with dynamic H/W, parity also runs at {h}x{w}, where the model fails ({reason}): its "
                            "height and width are not dynamic (a Flatten+Linear head fixes them); drop hw from "
                            "`dynamic`") from exc


def _required_inputs(model: nn.Module) -> list[str]:
    """The forward arguments without a default (an ExportedProgram's module takes ``*args``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _probe_failure(what: str, input_shape: Sequence[int], exc: BaseException) -> str:
    """Why a forward pass failed, in the words that lead to the fix: channels, dtype, or the size."""
    reason = first_line(exc)
    channels = re.search(r"to have (\d+) channels", reason)
    if channels:
        return (f"{what} takes {channels.group(1)} input channels, not {input_shape[0]} ({reason}): give `input_shape` "
                f"with {channels.group(1)} channels")
    if re.search(r"scalar type|dtype|Long|Half|BFloat16|Double", reason):
        return (f"{what} does not run on a float32 image tensor ({reason}): convdeploy exports models of one float32 "
                "NCHW input; convert the model with model.float() or wrap what it needs")
    size = "x".join(str(s) for s in input_shape[1:])
    return f"{what} cannot take a {size} input ({reason}); choose another `input_size`"


class _KeyRecorder(dict):
    """A dict that hands ``tensor`` for every key it is asked for, and remembers the keys."""

    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__()
        self.tensor = tensor
        self.asked: list[str] = []

    def __missing__(self, key: object) -> torch.Tensor:
        self.asked.append(repr(key))
        return self.tensor

    def get(self, key: object, default: object = None) -> torch.Tensor:
        return self[key]


def _input_structure(model: nn.Module, x: torch.Tensor) -> str | None:
    """How a forward that fails on one tensor reads its input: "a list of tensors" when it runs on one,
    "a dict (keys 'image')" when it asks a dict for keys; None when neither."""
    keys = _KeyRecorder(x)
    for candidate in ([x, x], (x, x), keys):
        try:
            with torch.no_grad():
                model(candidate)
        except Exception:  # noqa: BLE001 - the user's forward on a guess of its input: any failure is a no
            if candidate is not keys:
                continue
        if candidate is keys:  # it read keys (maybe failing later on what it got): it takes a dict
            return f"a dict (keys {', '.join(keys.asked)})" if keys.asked else None
        return f"a {type(candidate).__name__} of tensors"
    return None


def probe_forward(model: nn.Module, input_shape: Sequence[int], batch: int = 1, *, what: str = "the model") -> None:
    """Run one forward pass on a float32 zero input; what the model cannot take becomes a usable error
    (an ExportedProgram's guards raise AssertionError), and so does an output without elements."""
    size = "x".join(str(s) for s in input_shape)
    required = _required_inputs(model)
    if len(required) > 1:
        raise BadInputError(f"{what}'s forward takes {len(required)} inputs ({', '.join(required)}): convdeploy exports "
                            "models of one image tensor; wrap the model in a module whose forward takes one")
    try:
        with torch.no_grad():
            out = model(torch.zeros((batch, *input_shape)))
    except MemoryError as exc:
        raise BadInputError(f"not enough memory to run {what} on a {size} input: choose a smaller `input_size`"
                            ) from exc
    except Exception as exc:  # noqa: BLE001 - the user's forward may raise anything: it is the model that fails
        structure = _input_structure(model, torch.zeros((batch, *input_shape)))
        if structure is not None:
            raise BadInputError(f"{what}'s forward ({type(model).__name__}) reads its input as {structure}, not one "
                                "image tensor: convdeploy exports models of one NCHW image tensor; wrap the model in a "
                                "module whose forward takes the image and builds what it needs") from exc
        raise BadInputError(_probe_failure(what, input_shape, exc)) from exc
    empty = [name for name, t in flatten_outputs(out, lambda v: isinstance(v, torch.Tensor)) if t.numel() == 0]
    if empty:
        raise BadInputError(f"{what}'s output {empty[0]!r} has no elements at a {size} input: choose a larger "
                            "`input_size`")


