"""What TensorRT refuses in an explicitly quantized (Q/DQ) ONNX graph, and the precision of each op.

TensorRT's explicit quantization takes QuantizeLinear/DequantizeLinear at opset 13 or later
(per-axis scales) and only symmetric signed quantization: int8 (or fp8/int4) with every zero point
0, scales positive. A uint8 (asymmetric) activation, a non-zero zero point or a per-axis scale
before opset 13 makes its parser or builder fail. ``qdq_findings`` lists each such tensor once.
``node_precisions`` says which compute nodes read quantized inputs (int8) and which stay float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: element types TensorRT's Q/DQ layers take
TRT_QUANT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT4}


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _constant(proto: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in proto.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _zero_point_finding(proto: onnx.ModelProto, node: onnx.NodeProto) -> str | None:
    if len(node.input) < 3 or not node.input[2]:
        return None  # no zero point: uint8 by default, 0
    zp = _constant(proto, node.input[2])
    if zp is None:
        return f"{node.op_type} {node.name!r}: its zero point is computed, not a constant"
    if zp.dtype == np.uint8:
        return (f"{node.op_type} {node.name!r}: uint8 (asymmetric) quantization; TensorRT takes symmetric int8 "
                "(quantize with the tensorrt `target`)")
    tensor_type = onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)
    if tensor_type not in TRT_QUANT_TYPES:
        return f"{node.op_type} {node.name!r}: {zp.dtype} quantization; TensorRT takes int8, fp8 or int4"
    if np.any(zp.astype(np.float64) != 0):
        return f"{node.op_type} {node.name!r}: a non-zero zero point; TensorRT takes only 0"
    return None


def has_qdq(proto: onnx.ModelProto) -> bool:
    """Whether ``proto`` is explicitly quantized (holds QuantizeLinear/DequantizeLinear nodes)."""
    return any(n.op_type in QDQ_OPS for n in proto.graph.node)


def qdq_findings(proto: onnx.ModelProto) -> list[str]:
    """Why TensorRT would refuse the Q/DQ nodes of ``proto`` (empty: it takes them, or there are none)."""
    nodes = [n for n in proto.graph.node if n.op_type in QDQ_OPS]
    if not nodes:
        return []
    findings = []
    if _opset(proto) < 13:
        findings.append(f"Q/DQ at opset {_opset(proto)}: TensorRT needs opset 13 or later (per-channel scales)")
    for node in nodes:
        if node.op_type == "DequantizeLinear" and _constant(proto, node.input[0]) is not None:
            value = _constant(proto, node.input[0])
            if value is not None and value.dtype == np.int32:
                findings.append(f"DequantizeLinear {node.name!r}: an int32 (bias) input; TensorRT takes int8 weights "
                                "and float biases")
                continue
        finding = _zero_point_finding(proto, node)
        if finding:
            findings.append(finding)
    return findings


@dataclass(frozen=True)
class NodePrecision:
    """One compute node and the precision it reads its inputs in."""

    name: str
    op_type: str
    precision: str  # "int8" (reads Q/DQ inputs) or "float"


def node_precisions(proto: onnx.ModelProto) -> list[NodePrecision]:
    """Every compute node (not Q/DQ) of ``proto``, int8 when one of its inputs is a DequantizeLinear output."""
    dq_outputs = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    return [NodePrecision(n.name, n.op_type, "int8" if any(i in dq_outputs for i in n.input) else "float")
            for n in proto.graph.node if n.op_type not in QDQ_OPS]


def int8_mac_share(proto: onnx.ModelProto, macs_by_node: dict[str, int]) -> float:
    """The share of ``macs_by_node`` (``validators.macs.node_macs``) in nodes of ``proto`` that read int8 inputs."""
    precision = {p.name: p.precision for p in node_precisions(proto)}
    total = sum(macs_by_node.values())
    return sum(m for n, m in macs_by_node.items() if precision.get(n) == "int8") / total if total else 0.0
