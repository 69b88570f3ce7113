"""The float64 probe of the folds and rewrites: what each layer received, and how far a
replacement is from it (docs/architecture.md, "Conventions": every fold is measured).

``capture_inputs`` runs the model once on the probe with forward pre-hooks on the named
modules and keeps the first input each received; ``replacement_error`` runs a module and
its replacement on that input and returns the max abs and rel error.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn


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
    both = torch.isfinite(ref) & torch.isfinite(out)
    same = (torch.isnan(ref) & torch.isnan(out)) | (torch.isinf(ref) & (ref == out))
    if bool((~both & ~same).any()):
        return math.inf, math.inf
    abs_err = float((ref - out)[both].abs().max()) if bool(both.any()) else 0.0
    scale = float(ref[torch.isfinite(ref)].abs().max()) if bool(torch.isfinite(ref).any()) else 0.0
    return abs_err, abs_err / scale if scale > 0 else abs_err


@torch.no_grad()
def replacement_error(before: nn.Module, after: nn.Module, inp: Any) -> tuple[float, float]:
    """Errors of ``after`` against ``before`` on ``inp``; NaN when there is no probe input."""
    if inp is None:
        return math.nan, math.nan
    return output_error(before(inp), after(inp))
