"""The float64 probe of the folds and rewrites: what each layer received, and how far a
replacement is from it (docs/architecture.md, "Conventions": every fold is measured).

``capture_inputs`` runs the model once on the probe with forward pre-hooks on the named
modules and keeps the first input each received; ``replacement_error`` runs a module and
its replacement on that input and returns the max abs and rel error.

``Workbench.fold_one`` makes one fold and measures it, in one of three precisions:

* ``float64``: the whole model runs in float64 (``fold_model``'s copy), so does the fold;
* ``float64 layer-local``: the model's forward casts (``x.float()``) or builds float32
  constants, so it runs in its own dtype; each fold is made and measured on float64 copies
  of the layer and its replacement, on that layer's captured input, then cast back;
* ``float32``: the layer itself does not run in float64 either: made and measured as it is.

Whatever dtype and device a fold method creates its replacement in (a fresh ``nn.Conv2d``
is float32 on the CPU), it runs with the workbench's dtype as torch's default and its device
as the default device, and the replacement is moved to both before it is measured.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from deploy.core.errors import BadInputError, first_line
from deploy.core.outputs import flatten_outputs

FLOAT64 = "float64"
LAYER_LOCAL = "float64 layer-local"
FLOAT32 = "float32"
#: the relative error a fold may make at each precision and still be called exact (rounding, not a wrong fold)
EXACT_BOUND = {FLOAT64: 1e-9, LAYER_LOCAL: 1e-9, FLOAT32: 1e-4}


class _InputRecorder:
    """Forward pre-hooks that keep the (first) input each named module received."""

    def __init__(self, model: nn.Module, names: set[str]):
        self.inputs: dict[str, Any] = {}
        self._handles = [
            module.register_forward_pre_hook(self._hook(name))
            for name, module in model.named_modules()
            if name in names
        ]

    def _hook(self, name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            if name not in self.inputs and args and isinstance(args[0], (torch.Tensor, tuple)):
                self.inputs[name] = _detached(args[0])

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _detached(value: Any) -> Any:
    return tuple(_detached(v) for v in value) if isinstance(value, tuple) else value.detach()


def capture_inputs(model: nn.Module, names: set[str], probe: torch.Tensor | None) -> dict[str, Any]:
    """The first input (a tensor, or a tuple of tensors) each module in ``names`` receives when
    ``model`` runs on ``probe``; empty without a probe."""
    if probe is None or not names:
        return {}
    recorder = _InputRecorder(model, names)
    try:
        with torch.no_grad():
            model(probe)
    finally:
        recorder.close()
    return recorder.inputs


def output_error(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max abs error / max|ref|) over the finite values; inf when a NaN or inf of one
    is not the same value in the other (``deploy.core.metrics`` rules)."""
    if ref.numel() and bool(torch.isfinite(ref).all()) and bool(torch.isfinite(out).all()):
        # the common case, without the masks below (a tenth of their time on a full-size feature map)
        abs_err, scale = float((ref - out).abs().max()), float(ref.abs().max())
        return abs_err, abs_err / scale if scale > 0 else abs_err
    both = torch.isfinite(ref) & torch.isfinite(out)
    same = (torch.isnan(ref) & torch.isnan(out)) | (torch.isinf(ref) & (ref == out))
    if bool((~both & ~same).any()):
        return math.inf, math.inf
    abs_err = float((ref - out)[both].abs().max()) if bool(both.any()) else 0.0
    scale = float(ref[torch.isfinite(ref)].abs().max()) if bool(torch.isfinite(ref).any()) else 0.0
    return abs_err, abs_err / scale if scale > 0 else abs_err


class ReplacementFailedError(RuntimeError):
    """The replacement does not run on the input the layer it replaces ran on."""


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for _, t in flatten_outputs(value, lambda v: isinstance(v, torch.Tensor))]


@torch.no_grad()
def replacement_error(before: nn.Module, after: nn.Module, inp: Any, *, strict: bool = False) -> tuple[float, float]:
    """Errors of ``after`` against ``before`` on ``inp`` over every tensor they return (tuples and dicts
    flattened); NaN when there is no probe input or, unless ``strict``, ``before`` does not run on it alone
    (a layer called with more arguments than the one captured). ``ReplacementFailedError`` when ``after``
    does not run or returns other shapes."""
    if inp is None:
        return math.nan, math.nan
    try:
        ref = _tensors(before(inp))
    except Exception:  # noqa: BLE001 - the layer needs more than its first argument: the fold is unmeasured
        if strict:
            raise
        return math.nan, math.nan
    try:
        out = _tensors(after(inp))
    except Exception as exc:  # noqa: BLE001 - what a fold method made may raise anything
        raise ReplacementFailedError(f"{type(exc).__name__}: {first_line(exc, 200)}") from exc
    if [t.shape for t in out] != [t.shape for t in ref]:
        shapes = ", ".join("x".join(map(str, t.shape)) for t in out)
        raise ReplacementFailedError(f"it returns {shapes} where the layer returned "
                                     + ", ".join("x".join(map(str, t.shape)) for t in ref))
    return outputs_error(ref, out)


@torch.no_grad()
def probe_outputs(model: nn.Module, probe: torch.Tensor | None) -> list[torch.Tensor] | None:
    """Every tensor the model returns on the probe (tuples, lists and dicts flattened)."""
    if probe is None:
        return None
    return [t for _, t in flatten_outputs(model(probe), lambda v: isinstance(v, torch.Tensor))]


def outputs_error(before: list[torch.Tensor], after: list[torch.Tensor] | None) -> tuple[float, float]:
    """(max abs, max rel) error of ``after`` against ``before`` over every output; inf when their shapes differ."""
    if after is None or len(after) != len(before) or any(a.shape != b.shape for a, b in zip(after, before)):
        return math.inf, math.inf
    errors = [output_error(b, a) for b, a in zip(before, after)]
    return max(e[0] for e in errors), max(e[1] for e in errors)


def probe_input(model: nn.Module, probe_shape: tuple[int, ...] | None, seed: int,
                batch: int) -> torch.Tensor | None:
    """The seeded float64 probe of ``batch`` samples at ``probe_shape`` (default ``model.input_shape``), or None."""
    shape = probe_shape or getattr(model, "input_shape", None)
    if shape is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=gen, dtype=torch.float64)



def _to_dtype(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, tuple):
        return tuple(_to_dtype(v, dtype) for v in value)
    return value.to(dtype) if value.is_floating_point() else value


@contextlib.contextmanager
def working_dtype(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """torch's default dtype (and, off the CPU, its default device) set to ``dtype`` / ``device``
    while a fold method runs: the modules it creates are made where they will be measured."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device) if device.type != "cpu" else contextlib.nullcontext():
            yield
    finally:
        torch.set_default_dtype(old)


def same_module(before: nn.Module, after: nn.Module) -> bool:
    """True when a fold call changed nothing (same type, keys and values): no fold to report."""
    if type(before) is not type(after):
        return False
    a, b = before.state_dict(), after.state_dict()
    return list(a) == list(b) and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


@dataclass
class Folded:
    """One fold made: the module that replaces the layer, its errors on the probe, the precision measured in,
    and whether the call changed nothing (an idempotent call on an already folded layer is no fold)."""

    module: nn.Module
    max_abs_error: float
    max_rel_error: float
    precision: str
    unchanged: bool = False


@dataclass
class Workbench:
    """Where folds are made and measured: the dtype and device the model runs in during the fold,
    and whether each fold is made on float64 copies of its layer (``layer_local``)."""

    dtype: torch.dtype
    device: torch.device
    layer_local: bool = False

    def fold_one(self, module: nn.Module, make: Callable[[nn.Module], nn.Module], inp: Any, where: str) -> Folded:
        """``make(module)`` (it may change ``module`` in place) and its errors against ``module`` on ``inp``;
        ``where`` names the layer in errors."""
        if self.layer_local and self.dtype != torch.float64:
            try:
                return self._fold(copy.deepcopy(module).to(torch.float64), make, inp, where, torch.float64,
                                  LAYER_LOCAL, back=self.dtype)
            except Exception:  # noqa: BLE001 - the layer itself casts or builds float32 tensors: fold it as it is
                pass
        return self._fold(module, make, inp, where, self.dtype, FLOAT64 if self.dtype == torch.float64 else FLOAT32)

    def _fold(self, module: nn.Module, make: Callable[[nn.Module], nn.Module], inp: Any, where: str,
              dtype: torch.dtype, precision: str, back: torch.dtype | None = None) -> Folded:
        before = copy.deepcopy(module)
        with working_dtype(dtype, self.device), torch.no_grad():
            after = make(module).to(dtype=dtype, device=self.device)
        unchanged = same_module(before, after)
        try:
            err = replacement_error(before, after, None if inp is None else _to_dtype(inp, dtype),
                                    strict=precision == LAYER_LOCAL)
        except ReplacementFailedError as exc:
            if precision != FLOAT32:
                raise  # the layer-local float64 try falls back to float32; a float64 fold of the whole model restarts
            raise BadInputError(f"{where}: the module its fold put in place does not run on the layer's input "
                                f"({exc}): fix the fold method or export without `fold`") from exc
        return Folded(after.to(back) if back is not None else after, *err, precision, unchanged)
