"""One quantization: the fp32 ONNX model and its calibration cache in, a Q/DQ ONNX model out.

``onnxruntime.quantization.quantize_static`` does the work (QDQ format, per-channel weights, the
target's recipe, ``deploy.quantize.recipes``) from the calibration cache, so every call after the
first costs a graph rewrite, not a calibration. Nodes kept in float are excluded from it and then
read the float tensor again (ONNX Runtime points every consumer of a quantized tensor at its
DequantizeLinear, an excluded node included); Q/DQ pairs nobody reads any more are dropped.

The result is checked before anyone sees it: standard ONNX operators only, and for the TensorRT
target every QuantizeLinear/DequantizeLinear int8 with zero point 0 (``qdq_findings``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

from deploy.core.errors import BadInputError
from deploy.quantize.recipes import QuantRecipe, method_of
from validators.qdq import QDQ_OPS, qdq_findings


def preprocess(model_path: Path, out: Path) -> Path:
    """ONNX Runtime's quantization pre-processing (shape inference and its basic graph optimizations, all
    standard operators) of ``model_path`` into ``out``."""
    try:
        quant_pre_process(str(model_path), str(out), skip_symbolic_shape=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the pre-processing is the model's
        raise BadInputError(f"{model_path} cannot be prepared for quantization ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}): give the fp32 ONNX file that "
                            "`deploy export` wrote") from exc
    return out


def _refloat(proto: onnx.ModelProto, keep: set[str]) -> None:
    """Point the inputs of the ``keep`` nodes that read an activation through Q/DQ back at the float tensor."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:
        if node.name not in keep:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]


def _drop_unread(proto: onnx.ModelProto) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads (after ``_refloat``), initializers left unread, and opset
    imports of domains no node uses."""
    graph = proto.graph
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ_OPS and not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(init)
    used = {n.domain for n in graph.node} | {""}
    for opset in [o for o in proto.opset_import if o.domain not in used]:
        proto.opset_import.remove(opset)  # the quantizer declares com.microsoft and friends that no node uses


def check_quantized(proto: onnx.ModelProto, recipe: QuantRecipe) -> None:
    """What the recipe promises of its output: standard operators only and, for TensorRT, symmetric int8
    Q/DQ; a RuntimeError (a bug: exit 1) when the quantizer broke that promise."""
    custom = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise RuntimeError(f"the quantizer wrote non-standard operators: {', '.join(custom)}")
    if recipe.target == "tensorrt":
        findings = qdq_findings(proto)
        if findings:
            raise RuntimeError(f"the TensorRT recipe wrote Q/DQ that TensorRT refuses: {findings[0]}")


def quantize(prepared: Path, cache: Path, recipe: QuantRecipe, method: str, *,
             keep_float: Sequence[str] = ()) -> onnx.ModelProto:
    """The Q/DQ model of the pre-processed fp32 model ``prepared`` with the ranges in ``cache`` (module
    docstring), calibrated with ``method``; the nodes named in ``keep_float`` stay float."""
    known = {n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node}
    unknown = [n for n in keep_float if n not in known]
    if unknown:
        raise BadInputError(f"`keep_float` names node(s) the model does not have: {', '.join(unknown[:5])} "
                            "(the layer list of `deploy inspect` on the INT8 file names them)")
    quiet = logging.getLogger().level
    with tempfile.TemporaryDirectory(prefix="convdeploy-quant.") as tmp:
        out = Path(tmp) / "int8.onnx"
        logging.getLogger().setLevel(max(quiet, logging.WARNING))
        try:
            quantize_static(str(prepared), str(out), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(recipe.op_types) if recipe.op_types else None,
                            per_channel=True, activation_type=recipe.activation_type, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(keep_float), extra_options=dict(recipe.extra_options),
                            calibration_cache_path=str(cache), calibrate_method=method_of(method))
        finally:
            logging.getLogger().setLevel(quiet)
        proto = onnx.load(str(out))
    _refloat(proto, set(keep_float))
    _drop_unread(proto)
    check_quantized(proto, recipe)
    return proto

