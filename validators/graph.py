"""Static checks of an exported ONNX graph (docs/architecture.md, validators/graph.py).

``check_graph`` verifies that a deploy graph is custom-op free (default ONNX domain only),
parseable by TensorRT's ONNX parser (packaged support matrix, validators/tensorrt_ops.py), and
has no weight-computing subgraph: every Conv weight/bias is an initializer or a Constant
(possibly behind Identity). The folding papers' "zero inference overhead" claim (DO-Conv
Sec. 3.3, CoC's deploy form) means exactly this: the folded graph is a plain CNN.

Params and MACs are computed from the graph itself so they can be compared with the torch
counts (deploy/models/complexity.py) and between a folded model and its plain twin:

* params: elements of the floating-point initializers / Constant tensors of rank >= 1 (and the
  quantized weights a DequantizeLinear reads, not their scales or zero points),
  counted once per consuming node input (seen through Identity aliases); excluded are
  integer/bool tensors (shapes, axes, pads, indices), rank-0 literals (``x * 0.5``,
  epsilons), BatchNormalization running mean/var (inputs 3 and 4: buffers in torch, not
  parameters), Resize's roi and scales (the output geometry) and uses that read only a
  shape or type (Shape, Size, CastLike's target).
  Counting per use, not per tensor, matters: both exporters deduplicate
  identical tensors (e.g. the all-zero biases that Conv+BN fusion gives freshly initialised
  BNs), which would otherwise hide parameters. (A weight that torch truly shares between two
  layers is counted once per layer; CNNs of this project share none.)
* MACs at batch 1: Conv = prod(output shape) * C_in/groups * prod(kernel);
  Gemm/MatMul = prod(output shape) * K. Bias adds, BN, pooling and activations are not
  counted (the torch hook convention: nn.Conv2d and nn.Linear only). Output shapes come
  from ONNX shape inference at the given input shape. Only where inference cannot tell,
  and only within ``run_budget`` (``RUN_BUDGET``, 2**26 elements: 256 MiB of float32), one
  ONNX Runtime run on a zero input fills them in: the input at its fixed shape, every
  initializer and every tensor whose shape inference knows must fit the budget, else the
  MACs are unknown. ``run_budget=None`` never runs the graph (``deploy inspect`` on files
  from anywhere); a graph that computes a larger tensor from values known only at run time
  is not bounded by the check, so only graphs of trusted origin (the export pipeline's own)
  are run.
"""

from __future__ import annotations

import ast
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import onnx

from deploy.core.errors import GraphCheckError
from validators.macs import RUN_BUDGET, macs_per_op, node_macs
from validators.qdq import has_qdq, int8_mac_share, qdq_findings
from validators.tensorrt_ops import load_tensorrt_ops

DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
_CONV_OPS = ("Conv", "ConvTranspose")


@dataclass
class GraphReport:
    """Verdict and numbers of one ONNX graph."""

    opset: int
    nodes: int
    op_histogram: dict[str, int]
    params: int
    macs: int | None
    macs_by_op: dict[str, int]
    input_shape: tuple[int, ...] | None
    custom_domain_nodes: list[dict[str, str]] = field(default_factory=list)
    unsupported_ops: list[dict[str, Any]] = field(default_factory=list)
    dynamic_conv_weights: list[dict[str, str]] = field(default_factory=list)
    qdq_findings: list[str] = field(default_factory=list)
    int8_mac_share: float | None = None  # a Q/DQ graph: the share of its MACs in nodes that read int8
    einsum_nodes: list[str] = field(default_factory=list)
    trt_restrictions: dict[str, str] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "ok" if not self.reasons else "failed"

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d

    def raise_if_failed(self) -> None:
        """Raise ``GraphCheckError`` (exit 4) with every reason on one line."""
        if self.reasons:
            raise GraphCheckError("graph check failed: " + "; ".join(self.reasons) + ": fold the model (`fold`) "
                                  "or replace the flagged layers before deploying")


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those of If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _walk(g)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Every tensor known before run time: initializers and Constant-node values, by name."""
    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = attr.t
                elif attr.name == "value_floats":
                    consts[node.output[0]] = onnx.helper.make_tensor(node.output[0], onnx.TensorProto.FLOAT,
                                                                     [len(attr.floats)], list(attr.floats))
    return consts


def graph_params(model: onnx.ModelProto) -> int:
    """Parameter count of the graph by the rule in the module docstring."""
    graph = model.graph
    consts = constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    total = 0
    for node in graph.node:
        if node.op_type in ("Identity", "Constant", "Shape", "Size"):
            continue  # aliases, literals, and ops that read only a tensor's shape
        for slot, name in enumerate(node.input):
            while name in producer and producer[name].op_type == "Identity":
                name = producer[name].input[0]
            t = consts.get(name)
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                if slot == 0 and t is not None and len(t.dims) > 0:
                    total += math.prod(int(d) for d in t.dims)  # a quantized weight (int8); never its scales
                continue
            if t is None or t.data_type not in _FLOAT_TYPES or len(t.dims) == 0:
                continue
            if (node.op_type == "BatchNormalization" and slot in (3, 4)) or (node.op_type == "CastLike" and slot == 1):
                continue  # BN buffers; CastLike's target only lends its type
            if node.op_type in ("Resize", "Upsample") and slot >= 1:
                continue  # roi and scales: the output's geometry, not weights
            total += math.prod(int(d) for d in t.dims)
    return total


def node_module(node: onnx.NodeProto) -> str | None:
    """The torch module path a node came from (``layer2.0.conv2``), when the exporter recorded it:
    the dynamo exporter in the ``pkg.torch.onnx.name_scopes`` metadata, the TorchScript exporter
    in the node name (``/layer2/layer2.0/conv2/Conv``). None when unknown."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            inner = [str(x) for x in scopes[1:-1] if x]
            return inner[-1] if inner else None
    if not node.name.startswith("/"):
        return None
    path = ""
    for seg in node.name.split("/")[1:-1]:
        path = seg if (not path or seg.startswith(path + ".")) else f"{path}.{seg}"
    return path or None


def _where(node_name: str, module: str | None) -> str:
    return f"{module} ({node_name})" if module else node_name


def dynamic_conv_weights(graph: onnx.GraphProto) -> list[dict[str, str]]:
    """Conv/ConvTranspose inputs (weight, bias) computed at run time: node, input, tensor, producer, module."""
    consts = constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    flagged = []
    for node in graph.node:
        if node.op_type not in _CONV_OPS:
            continue
        for slot, label in ((1, "weight"), (2, "bias")):
            if len(node.input) <= slot or not node.input[slot]:
                continue
            src = node.input[slot]
            while src in producer and producer[src].op_type in ("Identity", "DequantizeLinear"):
                src = producer[src].input[0]  # an alias, or an int8 weight dequantized (an INT8 graph's constant)
            if src in consts:
                continue
            by = producer.get(src)
            computed_by = f"{by.op_type} node {by.name or '<unnamed>'}" if by is not None else "a graph input"
            entry = {"node": node.name or "<unnamed>", "input": label, "tensor": node.input[slot],
                     "computed_by": computed_by}
            module = node_module(node)
            if module:
                entry["module"] = module  # the torch module it came from, when the exporter recorded it
            flagged.append(entry)
    return flagged


#: stored tensors up to this many elements keep their values in ``declarations_only`` (shape
#: constants, axes, scales: what data propagation reads); larger ones keep only dims and type
def _tensorrt_support(nodes: list[onnx.NodeProto], table: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(ops the TensorRT parser cannot take, with their nodes; restrictions of the ops it can)."""
    unsupported, restrictions = [], {}
    by_op: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        if n.domain in DEFAULT_DOMAINS:
            by_op[n.op_type].append(n.name)
    for op, names in sorted(by_op.items()):
        row = table.lookup(op)
        if row is None or not row.supported:
            why = "not in the TensorRT support matrix" if row is None else "marked unsupported"
            unsupported.append({"op": op, "nodes": names, "why": why})
        elif row.restrictions:
            restrictions[op] = row.restrictions
    return unsupported, restrictions


def check_graph(model: onnx.ModelProto, input_shape: Sequence[int] | None = None, *, allow_einsum: bool = False,
                run_budget: int | None = RUN_BUDGET) -> GraphReport:
    """Check ``model`` and count its params/MACs; never raises on a failed check (see
    ``GraphReport.raise_if_failed``). ``input_shape`` (C, H, W) is needed only when the
    graph's spatial dims are symbolic; ``run_budget`` bounds the shape fallback (module
    docstring; None: never run the graph)."""
    table = load_tensorrt_ops()
    opset = _default_opset(model)
    nodes = list(_walk(model.graph))
    hist = Counter(n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}::{n.op_type}" for n in nodes)
    reasons: list[str] = []

    custom = [{"name": n.name, "op_type": n.op_type, "domain": n.domain} for n in nodes
              if n.domain not in DEFAULT_DOMAINS or n.op_type == "ATen"]
    if custom:
        shown = ", ".join(f"{c['domain'] or 'default'}::{c['op_type']} ({c['name']})" for c in custom[:5])
        reasons.append(f"{len(custom)} node(s) outside the default ONNX domain: {shown}")
    unsupported, restrictions = _tensorrt_support(nodes, table)
    if unsupported:
        reasons.append("ops TensorRT's ONNX parser cannot take: " +
                       ", ".join(f"{u['op']} ({', '.join(u['nodes'][:3])})" for u in unsupported))
    if not table.opset_min <= opset <= table.opset_max:
        reasons.append(f"opset {opset} is outside TensorRT {table.tensorrt_version}'s range "
                       f"{table.opset_min}-{table.opset_max}")

    dynamic = dynamic_conv_weights(model.graph)
    if dynamic:
        more = f" (+{len(dynamic) - 6} more)" if len(dynamic) > 6 else ""
        reasons.append(f"dynamic conv weights in {len(dynamic)} Conv node(s) (computed at run time, not folded): " +
                       ", ".join(f"{_where(d['node'], d.get('module'))} {d['input']} <- {d['computed_by']}"
                                 for d in dynamic[:6]) + more)
    qdq = qdq_findings(model)
    if qdq:
        more = f" (+{len(qdq) - 3} more)" if len(qdq) > 3 else ""
        reasons.append(f"Q/DQ that TensorRT refuses: {'; '.join(qdq[:3])}{more}")
    einsum_at = [(n.name, node_module(n)) for n in nodes if n.op_type == "Einsum"]
    einsum = [name for name, _ in einsum_at]
    if einsum and not allow_einsum:
        more = f" (+{len(einsum) - 6} more)" if len(einsum) > 6 else ""
        reasons.append(f"{len(einsum)} Einsum node(s) {', '.join(_where(*e) for e in einsum_at[:6])}{more}: "
                       "a weight-computing or unfused einsum subgraph")

    share = None
    try:
        per_node = node_macs(model, input_shape, run_budget=run_budget)
        macs, macs_by_op = macs_per_op(model, per_node)
        share = int8_mac_share(model, per_node) if has_qdq(model) else None
    except GraphCheckError as exc:
        macs, macs_by_op = None, {}
        reasons.append(str(exc))
    shape = tuple(input_shape) if input_shape is not None else _static_chw(model)
    return GraphReport(
        opset=opset, nodes=len(nodes), op_histogram=dict(sorted(hist.items())), params=graph_params(model),
        macs=macs, macs_by_op=macs_by_op, input_shape=shape, custom_domain_nodes=custom,
        unsupported_ops=unsupported, dynamic_conv_weights=dynamic, qdq_findings=qdq, int8_mac_share=share, einsum_nodes=einsum,
        trt_restrictions=restrictions,
        tensorrt={"version": table.tensorrt_version, "opsets": [table.opset_min, table.opset_max], "source": table.source},
        reasons=reasons,
    )


def _static_chw(model: onnx.ModelProto) -> tuple[int, ...] | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim[1:]
    return tuple(d.dim_value for d in dims) if dims and all(d.HasField("dim_value") for d in dims) else None


def compare_reports(a: GraphReport, b: GraphReport) -> list[str]:
    """Differences in op histogram, params and MACs (empty list: the graphs are twins,
    e.g. a folded CoC/DO-Conv export and the plain model's export)."""
    diffs = []
    if a.op_histogram != b.op_histogram:
        ops = sorted(set(a.op_histogram) | set(b.op_histogram))
        diffs.append("op histogram differs: " + ", ".join(
            f"{op} {a.op_histogram.get(op, 0)} vs {b.op_histogram.get(op, 0)}" for op in ops
            if a.op_histogram.get(op, 0) != b.op_histogram.get(op, 0)))
    if a.params != b.params:
        diffs.append(f"params differ: {a.params} vs {b.params}")
    if a.macs != b.macs:
        diffs.append(f"MACs differ: {a.macs} vs {b.macs}")
    return diffs
