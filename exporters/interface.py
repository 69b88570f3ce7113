"""The interface of an exported graph: its output names and which input axes are symbolic.

One input ``input`` (N, C, H, W); one graph output per model output, named as
``deploy.core.outputs`` flattens them (``output``, dict keys, ``output_0`` …); symbolic axes
``batch`` and, with dynamic H/W, ``height`` and ``width`` (the dynamo exporter's own
symbols, ``s0`` and the like, are renamed wherever the outputs use them too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torch import nn

from deploy.core.errors import BadInputError, first_line
from validators.runtimes.pytorch import named_outputs


def output_names(model: nn.Module, x: torch.Tensor, shape: tuple[int, ...]) -> list[str]:
    """One probe forward: a clear message for an input size the model cannot take, and the output names."""
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise BadInputError(f"the model cannot take input (N, {', '.join(map(str, shape))}) ({first_line(exc)}): "
                            "choose an input size it supports") from exc
    return [name for name, _ in named_outputs(out)]


def check_output_names(proto: onnx.ModelProto, names: list[str]) -> None:
    """The exported graph's outputs must be the model's, by name and in order."""
    got = [o.name for o in proto.graph.output]
    if got != names:
        raise BadInputError(f"the exported graph has outputs {got}, not the model's {names} (an output returned twice, "
                            "or a constant output?): return each output tensor once")


@dataclass(frozen=True)
class Axes:
    """Which axes of the input are symbolic, and the graph's output names."""

    batch: bool
    hw: bool
    outputs: list[str]

    def dynamo_shapes(self) -> tuple[dict[int, Any], ...] | None:
        dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1)} if self.batch else {}
        if self.hw:
            dims.update({2: torch.export.Dim("height", min=1), 3: torch.export.Dim("width", min=1)})
        return (dims,) if dims else None

    def torchscript_axes(self) -> dict[str, dict[int, str]] | None:
        inp = ({0: "batch"} if self.batch else {}) | ({2: "height", 3: "width"} if self.hw else {})
        if not inp:
            return None
        return {"input": inp, **({name: {0: "batch"} for name in self.outputs} if self.batch else {})}


def name_dynamic_dims(proto: onnx.ModelProto, dynamic_hw: bool) -> None:
    """Call the symbolic input dims ``batch`` (and ``height``, ``width``) — dynamo may say ``s0`` —
    and rename the same symbols wherever an output uses them."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    wanted = {0: "batch", **({2: "height", 3: "width"} if dynamic_hw else {})}
    renames = {dims[i].dim_param: name for i, name in wanted.items() if i < len(dims) and dims[i].dim_param}
    for vi in list(proto.graph.input[:1]) + list(proto.graph.output):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]

