"""Which quantized nodes lose the most: the SQNR of each quantized tensor against its float value.

For every activation that the Q/DQ model quantizes (X → QuantizeLinear → DequantizeLinear → X̂)
both X and X̂ become graph outputs of a copy of the model, which runs on a few calibration
batches; every weight is dequantized and set beside its float original. The error of a tensor is
its signal-to-quantization-noise ratio, taken per channel (axis 1) and averaged as noise-to-signal,

    SQNR = -10 log10( mean_c  Σ (X_c - X̂_c)² / Σ X_c² )   [dB],

so that one channel with a huge range, which squeezes every other channel of a per-tensor scale
into a few levels, shows as the loss it is instead of hiding under that channel's energy. A node
is as sensitive as its worst quantized input; nodes are ranked worst first and named by the module
they were exported from (``validators.graph.node_module``) where the graph says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from validators.graph import node_module
from validators.qdq import QDQ_OPS

#: the SQNR of a tensor that quantization left exact
EXACT_DB = 200.0


@dataclass(frozen=True)
class NodeSensitivity:
    """One quantized node, its worst input's SQNR and which input that is."""

    node: str
    op_type: str
    module: str | None
    sqnr_db: float
    worst_input: str

    def text(self) -> str:
        where = f" ({self.module})" if self.module else ""
        return f"{self.node}{where}: {self.sqnr_db:.1f} dB on {self.worst_input}"


def sqnr_db(reference: np.ndarray, quantized: np.ndarray) -> float:
    """The channel-averaged SQNR of ``quantized`` against ``reference`` (module docstring); axis 1 is the
    channel axis of 2-D and wider tensors."""
    ref, q = np.asarray(reference, np.float64), np.asarray(quantized, np.float64)
    if ref.ndim >= 2:
        axes = tuple(i for i in range(ref.ndim) if i != 1)
        signal, noise = (ref ** 2).sum(axis=axes), ((ref - q) ** 2).sum(axis=axes)
    else:
        signal, noise = np.atleast_1d((ref ** 2).sum()), np.atleast_1d(((ref - q) ** 2).sum())
    live = signal > 0
    nsr = np.where(live, noise / np.where(live, signal, 1.0), np.where(noise > 0, 1.0, 0.0))
    mean = float(nsr.mean())
    return EXACT_DB if mean <= 10 ** (-EXACT_DB / 10) else -10.0 * math.log10(mean)


def _activation_pairs(proto: onnx.ModelProto) -> dict[str, str]:
    """DequantizeLinear output → the float tensor its QuantizeLinear reads, for every activation."""
    inits = {t.name for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    pairs = {}
    for dq in (n for n in proto.graph.node if n.op_type == "DequantizeLinear"):
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits:
            pairs[dq.output[0]] = q.input[0]
    return pairs


def _activation_sqnr(proto: onnx.ModelProto, pairs: dict[str, str], inputs: list[np.ndarray]) -> dict[str, float]:
    """SQNR of each DequantizeLinear output against its float tensor, over ``inputs``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    present = {o.name for o in probe.graph.output}
    for name in sorted({*pairs, *pairs.values()} - present):
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the Q/DQ as written
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    collected: dict[str, list[np.ndarray]] = {n: [] for n in {*pairs, *pairs.values()}}
    for x in inputs:
        values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
        for name in collected:
            collected[name].append(values[name])
    return {dq: sqnr_db(np.concatenate(collected[src]), np.concatenate(collected[dq])) for dq, src in pairs.items()}


def _weight_sqnr(proto: onnx.ModelProto, float_weights: dict[str, np.ndarray]) -> dict[str, float]:
    """SQNR of each dequantized weight against its float original (ONNX Runtime names the int8 copy
    ``<name>_quantized``)."""
    inits = {t.name: t for t in proto.graph.initializer}
    out = {}
    for dq in (n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits):
        original = float_weights.get(dq.input[0].removesuffix("_quantized"))
        if original is None or original.dtype.kind != "f":
            continue
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 else np.zeros(1)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        out[dq.output[0]] = sqnr_db(original, (q - zp.reshape(shape)) * scale.reshape(shape))
    return out


def rank_nodes(quantized: onnx.ModelProto, prepared: Path, inputs: list[np.ndarray]) -> list[NodeSensitivity]:
    """The quantized nodes of ``quantized`` ranked by their worst input's SQNR, worst first (module
    docstring); ``prepared`` is the float model it was quantized from, ``inputs`` a few batches."""
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(prepared)).graph.initializer}
    scores = {**_activation_sqnr(quantized, _activation_pairs(quantized), inputs), **_weight_sqnr(quantized, floats)}
    ranked = []
    for node in quantized.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        measured = [(scores[i], i) for i in node.input if i in scores]
        if measured:
            db, worst = min(measured)
            ranked.append(NodeSensitivity(node.name, node.op_type, node_module(node), db, worst))
    return sorted(ranked, key=lambda s: s.sqnr_db)
