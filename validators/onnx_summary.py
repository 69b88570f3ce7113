"""What an ONNX graph declares, read without running it: interface dtypes and one row per node.

``interface`` gives every graph input and output with its element type and dims (symbolic
dims by name). ``layer_rows`` gives, per node, its op, its inputs and outputs with the
shapes and dtypes ONNX shape inference finds (nothing is executed and nothing is allocated
by a declared size), its attributes, and the shapes of the weights it reads (initializers
and Constant values) — the view polygraphy prints with ``inspect model --show layers attrs
weights``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from validators.graph import constants
from validators.macs import declarations_only
from validators.qdq import has_qdq, node_precisions

#: a list attribute longer than this is shown by its length only
_MAX_LIST = 16


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name, element type (``float32``; ``?`` when unknown) and dims (``None``: no shape known)."""

    name: str
    dtype: str
    shape: list[int | str] | None

    def text(self) -> str:
        return f"{self.name} {self.dtype} {shape_text(self.shape)}"


@dataclass
class LayerRow:
    """One node: op, inputs, outputs, attributes and the shapes of the weights it reads."""

    name: str
    op: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    attributes: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, list[int]] = field(default_factory=dict)
    precision: str | None = None  # a Q/DQ graph: "int8" (reads a DequantizeLinear output) or "float"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shape_text(shape: list[int | str] | None) -> str:
    """``[batch, 3, 32, 32]``; ``[]`` for a scalar, ``?`` when no shape is known."""
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def dtype_name(elem_type: int) -> str:
    """``float32`` for ``TensorProto.FLOAT``; ``?`` when undefined or unknown."""
    if elem_type == onnx.TensorProto.UNDEFINED:
        return "?"
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type in onnx.TensorProto.DataType.values() \
            else "?"


def _value_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tensor = vi.type.tensor_type
    shape = None
    if tensor.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    return TensorInfo(vi.name, dtype_name(tensor.elem_type), shape)


def interface(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs (initializers that older exporters list as inputs left out) and outputs."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [_value_info(v) for v in model.graph.input if v.name not in inits]
    return inputs, [_value_info(v) for v in model.graph.output]


def interface_record(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """``interface`` as plain data: ``{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}`` (an engine's
    record keeps it, so a Triton config can be written from the record alone)."""
    ins, outs = interface(model)
    return {"inputs": [asdict(t) for t in ins], "outputs": [asdict(t) for t in outs]}


def _known_tensors(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Every tensor shape inference can describe, plus the stored tensors (from their declarations)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(declarations_only(model), data_prop=True)
    except Exception:  # noqa: BLE001 - inference fails in many ways on hand-made graphs; shapes are then unknown
        inferred = model
    graph = inferred.graph
    known = {vi.name: _value_info(vi) for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}
    for name, t in constants(model.graph).items():
        known[name] = TensorInfo(name, dtype_name(t.data_type), [int(d) for d in t.dims])
    return known


def _attribute(attr: onnx.AttributeProto) -> Any:
    """An attribute as plain data: numbers, strings and short lists as they are; tensors and graphs by shape."""
    if attr.type == onnx.AttributeProto.TENSOR:
        return f"tensor {dtype_name(attr.t.data_type)} [{'x'.join(map(str, attr.t.dims)) or 'scalar'}]"
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return f"subgraph ({attr.name})"
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        if len(value) > _MAX_LIST:
            return f"list of {len(value)}"
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def layer_rows(model: onnx.ModelProto) -> list[LayerRow]:
    """One row per node of the top-level graph, in graph order (subgraphs are shown as attributes)."""
    known = _known_tensors(model)
    stored = constants(model.graph)
    precision = {p.name: p.precision for p in node_precisions(model)} if has_qdq(model) else {}
    rows = []
    for i, node in enumerate(model.graph.node):
        def info(name: str) -> TensorInfo:
            return known.get(name, TensorInfo(name, "?", None))

        rows.append(LayerRow(
            name=node.name or f"{node.op_type}_{i}",
            op=node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}",
            inputs=[info(n) for n in node.input if n],
            outputs=[info(n) for n in node.output if n],
            attributes={a.name: _attribute(a) for a in node.attribute},
            weights={n: [int(d) for d in stored[n].dims] for n in node.input if n in stored},
            precision=precision.get(node.name),
        ))
    return rows
