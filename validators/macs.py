"""Multiply-accumulates of an ONNX graph, from shape inference on its declarations alone (weights'
values dropped, so a file declaring a huge input costs what its bytes cost), or, for the pipeline's own
graphs and only within ``RUN_BUDGET``, from one ONNX Runtime run where inference cannot tell."""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
import onnx

from deploy.core.errors import GraphCheckError
from validators.runtimes.onnxruntime import all_node_outputs

#: the most elements a known tensor may hold for the pipeline's own graph to be run once for its shapes
RUN_BUDGET = 2**26


DECLARATION_VALUES = 1024


def declarations_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` for shape inference: nodes, interface, functions and every initializer's
    dims and type, but the values only of small initializers (``DECLARATION_VALUES``). Shape
    inference serialises the model it is given; without the weights that costs kilobytes, not the
    model's size (ResNet-50: 0.02 s instead of 0.6 s), and shapes come out the same."""
    slim = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                           producer_version=model.producer_version, domain=model.domain,
                           model_version=model.model_version)
    slim.opset_import.extend(model.opset_import)
    slim.functions.extend(model.functions)
    src, dst = model.graph, slim.graph
    dst.name = src.name
    dst.node.extend(src.node)
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    for t in src.initializer:
        if math.prod(int(d) for d in t.dims) <= DECLARATION_VALUES or t.data_location == onnx.TensorProto.EXTERNAL:
            dst.initializer.append(t)
        else:
            dst.initializer.add(name=t.name, dims=t.dims, data_type=t.data_type)
    return slim


def _fixed_probe(model: onnx.ModelProto, input_shape: Sequence[int] | None) -> onnx.ModelProto:
    """A copy of ``model`` whose input has fixed dims (batch 1, ``input_shape`` if given, 1 for
    any other symbolic dim) and no recorded intermediate shapes: the exporter's symbolic
    ``value_info`` would otherwise stop inference from propagating the fixed sizes."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inp = probe.graph.input[0].type.tensor_type.shape
    want = [1, *input_shape] if input_shape is not None else None
    for i, dim in enumerate(inp.dim):
        if want is not None and i < len(want):
            dim.dim_value = int(want[i])
        elif not dim.HasField("dim_value"):
            dim.dim_value = 1
    del probe.graph.value_info[:]
    for out in probe.graph.output:
        out.type.tensor_type.ClearField("shape")
    return probe


def inferred_shapes(model: onnx.ModelProto, *, strict: bool = False) -> dict[str, tuple[int | str, ...]]:
    """Shapes ONNX shape inference (with data propagation) finds for every tensor it can, symbolic
    dims by name; an empty dict when inference fails (``strict``: the error propagates)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference fails in many ways; callers fall back or say unknown
        if strict:
            raise
        return {}
    shapes: dict[str, tuple[int | str, ...]] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                    for d in vi.type.tensor_type.shape.dim)
    return shapes


def _shapes(model: onnx.ModelProto, input_shape: Sequence[int] | None,
            run_budget: int | None) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor at batch 1 (and ``input_shape`` if given)."""
    probe = _fixed_probe(declarations_only(model), input_shape)
    fixed = tuple(d.dim_value for d in probe.graph.input[0].type.tensor_type.shape.dim)
    shapes: dict[str, tuple[int, ...]] = {probe.graph.input[0].name: fixed}
    for t in probe.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    for name, dims in inferred_shapes(probe).items():
        if dims and all(isinstance(d, int) and d > 0 for d in dims):
            shapes[name] = tuple(int(d) for d in dims)
    needed = {o for n in probe.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") for o in (n.output[0], n.input[0])}
    if needed - set(shapes) and run_budget is not None and _fits(shapes, run_budget):
        shapes.update(_shapes_by_running(_fixed_probe(model, input_shape), fixed))
    return shapes


def _fits(shapes: dict[str, tuple[int, ...]], budget: int) -> bool:
    """Whether every shape known so far holds at most ``budget`` elements."""
    return all(math.prod(s) <= budget for s in shapes.values())


def _shapes_by_running(probe: onnx.ModelProto, fixed: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    values = all_node_outputs(probe, np.zeros(fixed, dtype=np.float32), skip_constants=False)
    return {n: tuple(v.shape) for n, v in values.items()}


def node_macs(model: onnx.ModelProto, input_shape: Sequence[int] | None = None, *,
              run_budget: int | None = RUN_BUDGET) -> dict[str, int]:
    """MACs at batch 1 of each Conv, Gemm and MatMul node, by node name (shapes: module docstring)."""
    shapes = _shapes(model, input_shape, run_budget)
    macs: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        out, w = shapes.get(node.output[0]), shapes.get(node.input[1])
        a = shapes.get(node.input[0])
        if out is None or w is None or a is None:
            raise GraphCheckError(f"cannot infer the shapes around {node.op_type} node {node.name}: "
                                  "export with a static input size")
        if node.op_type == "Conv":
            k = math.prod(w[1:])  # C_in/groups * kH * kW
        elif node.op_type == "Gemm":
            trans_b = next((at.i for at in node.attribute if at.name == "transB"), 0)
            k = w[1] if trans_b else w[0]
        else:
            k = a[-1]
        macs[node.name or f"{node.op_type}_{i}"] = math.prod(out) * int(k)
    return macs


def macs_per_op(model: onnx.ModelProto, per_node: dict[str, int]) -> tuple[int, dict[str, int]]:
    """Total MACs and MACs per op type of ``node_macs``' result."""
    op_of = {node.name or f"{node.op_type}_{i}": node.op_type for i, node in enumerate(model.graph.node)}
    by_op: Counter[str] = Counter()
    for name, macs in per_node.items():
        by_op[op_of[name]] += macs
    return int(sum(by_op.values())), dict(sorted(by_op.items()))


def graph_macs(model: onnx.ModelProto, input_shape: Sequence[int] | None = None, *,
               run_budget: int | None = RUN_BUDGET) -> tuple[int, dict[str, int]]:
    """MACs at batch 1 of Conv, Gemm and MatMul nodes, total and per op type (shapes: module docstring)."""
    return macs_per_op(model, node_macs(model, input_shape, run_budget=run_budget))
