"""Fold coverage: what an exported graph still holds that a linear fold would remove.

``check_fold_coverage`` reads the ONNX graph (after folding, export and simplification)
and reports, with node names and the torch modules they came from:

* ``batchnorm_after_conv`` — a BatchNormalization whose input is a Conv output used by
  nothing else: conv and BN fold into one conv (``deploy.layers.conv_bn``);
* ``dynamic_conv_weight`` — a Conv whose weight or bias is computed at run time (an
  unfolded CoC / DO-Conv kernel composition);
* ``parallel_convs`` — convolutions reading the same tensor whose outputs are summed (by
  Adds, or by ``torch.stack(...).sum(0)``: a ReduceSum over a Concat of Unsqueezes),
  possibly with that tensor itself or a BatchNormalization of it (RepVGG / MobileOne /
  ACNet branches): kernels of the same stride, groups and dilation, centred alike, add up
  into one conv, and an identity branch is a conv with an identity kernel.

A BatchNormalization after a Conv whose pair the fold kept on purpose (``deploy.fold.fold.KeptPair``:
its weights or statistics are read elsewhere in the model, which fusing would change) is ``kept``
with that reason, not a finding.

Decision: a BatchNormalization after anything else — a ReLU, a concatenation, a product
of two run-time tensors (SPConv's and IC's branch mixing, SCConv's gate), the graph input —
is ``kept``, not a finding. It cannot be folded into the op before it by a linear fold of
two adjacent layers; folding it needs a rewrite of the layer it follows. Kept nodes are
listed too, so a graph that still holds BatchNormalization is never called clean.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import onnx

from deploy.core.errors import GraphCheckError
from validators.graph import constants, dynamic_conv_weights, node_module

if TYPE_CHECKING:  # the record only: deploy.fold imports torch, which `deploy inspect` never loads
    from deploy.fold.fold import KeptPair

_TIED = "conv_bn_kept"  # a Conv+BN pair the fold kept: its tensors are read elsewhere
_METHODS = "give the layer a `switch_to_deploy()`, `reparameterize()` or `fuse()` that folds it"


@dataclass
class FoldFinding:
    """One piece of structure left in the graph: what it is, where, and why it matters."""

    kind: str
    nodes: list[str]
    modules: list[str]
    message: str
    after_op: str = ""  # kept BatchNormalization: the op type it follows ("input" for the graph input)


@dataclass
class FoldCoverageReport:
    """Findings (foldable structure that was not folded) and kept nodes (not foldable linearly)."""

    findings: list[FoldFinding] = field(default_factory=list)
    kept: list[FoldFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def clean(self) -> bool:
        """Nothing foldable and no BatchNormalization left at all."""
        return not self.findings and not self.kept

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "clean": self.clean, "summary": self.summary(),
                "findings": [asdict(f) for f in self.findings], "kept": [asdict(k) for k in self.kept]}

    def kept_summary(self) -> str:
        """``18 BatchNormalization kept after Add 18 (layer1.0.bn1, …)`` and the pairs kept on purpose, or empty."""
        loose = [k for k in self.kept if k.kind != _TIED]
        tied = [k for k in self.kept if k.kind == _TIED]
        parts = []
        if loose:
            ops = Counter(k.after_op for k in loose)
            modules = [m for k in loose for m in k.modules]
            shown = ", ".join(modules[:4]) + (", …" if len(modules) > 4 else "")
            parts.append(f"{len(loose)} BatchNormalization kept after {', '.join(f'{op} {n}' for op, n in ops.items())}"
                         f"{' (' + shown + ')' if shown else ''}: they follow no Conv, so no Conv+BN fusion removes "
                         "them (folding them takes a rewrite of the layer they follow)")
        if tied:
            parts.append(f"{len(tied)} Conv+BN pair(s) kept on purpose: " + "; ".join(k.message for k in tied[:4])
                         + (f" (+{len(tied) - 4} more)" if len(tied) > 4 else ""))
        return " | ".join(parts)

    def summary(self) -> str:
        """One line: ``clean``, or what was found and what was kept."""
        if self.clean:
            return "clean"
        parts = []
        if self.findings:
            parts.append(f"{len(self.findings)} foldable structure(s) left: " + "; ".join(f.message for f in self.findings))
        if self.kept:
            parts.append(self.kept_summary())
        return " | ".join(parts)

    def raise_if_failed(self) -> None:
        """Raise ``GraphCheckError`` (exit 4) when foldable structure is left."""
        if self.findings:
            raise GraphCheckError("fold coverage: " + "; ".join(f.message for f in self.findings[:6]) +
                                  (f" (+{len(self.findings) - 6} more)" if len(self.findings) > 6 else "") +
                                  f": {_METHODS}, or export without `strict_fold`")


class _Graph:
    """Producers, consumers and constants of one graph, seen through Identity aliases."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.consts = constants(graph)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for t in n.input:
                self.consumers[t].append(n)
        self.outputs = {o.name for o in graph.output}

    def source(self, tensor: str) -> str:
        while tensor in self.producer and self.producer[tensor].op_type == "Identity":
            tensor = self.producer[tensor].input[0]
        return tensor

    def made_by(self, tensor: str) -> onnx.NodeProto | None:
        return self.producer.get(self.source(tensor))

    def sole_use(self, tensor: str) -> bool:
        return len(self.consumers[tensor]) == 1 and tensor not in self.outputs


def _where(nodes: list[onnx.NodeProto]) -> tuple[list[str], list[str]]:
    names = [n.name or f"<{n.op_type}>" for n in nodes]
    modules = sorted({m for m in (node_module(n) for n in nodes) if m})
    return names, modules


def _label(node: onnx.NodeProto) -> str:
    module = node_module(node)
    return f"{node.op_type} {node.name or '<unnamed>'}" + (f" ({module})" if module else "")


def _tied_pair(modules: list[str], kept_pairs: Sequence[KeptPair]) -> KeptPair | None:
    return next((p for p in kept_pairs if {p.conv, p.bn} <= set(modules)), None)


def _batchnorms(g: _Graph, in_branches: set[str],
                kept_pairs: Sequence[KeptPair]) -> tuple[list[FoldFinding], list[FoldFinding]]:
    findings, kept = [], []
    for bn in (n for n in g.nodes if n.op_type == "BatchNormalization"):
        if bn.name in in_branches:
            continue
        src = g.made_by(bn.input[0])
        names, modules = _where([bn] + ([src] if src is not None else []))
        pair = _tied_pair(modules, kept_pairs)
        if src is not None and src.op_type == "Conv" and pair is not None:
            kept.append(FoldFinding(_TIED, names, modules,
                                    f"{_label(bn)} after {_label(src)}: not fused, {', '.join(pair.shared)} also "
                                    "read elsewhere in the model, which the fused weights would change",
                                    after_op="Conv"))
        elif src is not None and src.op_type == "Conv" and g.sole_use(src.output[0]):
            findings.append(FoldFinding("batchnorm_after_conv", names, modules,
                                        f"{_label(bn)} after {_label(src)}: fuse the BatchNorm into the conv"))
        else:
            after = _label(src) if src is not None else "the graph input"
            kept.append(FoldFinding("batchnorm_kept", names[:1], [m for m in [node_module(bn)] if m],
                                    f"{_label(bn)} after {after}: no Conv+BN fusion",
                                    after_op=src.op_type if src is not None else "input"))
    return findings, kept


def _dynamic_weights(graph: onnx.GraphProto) -> list[FoldFinding]:
    return [FoldFinding("dynamic_conv_weight", [d["node"]], [d["module"]] if d.get("module") else [],
                        f"Conv {d['node']}{' (' + d['module'] + ')' if d.get('module') else ''} {d['input']} is "
                        f"computed at run time by {d['computed_by']}: fold the kernel into a constant")
            for d in dynamic_conv_weights(graph)]


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class _Conv:
    """A Conv node's geometry, when its weight is a constant and its padding explicit."""

    node: onnx.NodeProto
    kernel: tuple[int, ...]
    out_ch: int
    in_per_group: int
    groups: int
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]

    @classmethod
    def of(cls, node: onnx.NodeProto, g: _Graph) -> "_Conv | None":
        w = g.consts.get(g.source(node.input[1])) if len(node.input) > 1 else None
        auto = _attr(node, "auto_pad", b"NOTSET")
        if w is None or len(w.dims) != 4 or auto not in (b"NOTSET", "NOTSET"):
            return None
        k = tuple(int(d) for d in w.dims[2:])
        return cls(node, k, int(w.dims[0]), int(w.dims[1]), int(_attr(node, "group", 1)),
                   tuple(_attr(node, "strides", [1, 1])), tuple(_attr(node, "dilations", [1, 1])),
                   tuple(_attr(node, "pads", [0, 0, 0, 0])))

    def offsets(self) -> tuple[int, ...] | None:
        """Where the kernel centre sits relative to the padded origin (top, left, bottom, right)."""
        if any(k % 2 == 0 for k in self.kernel):
            return None
        half = [(k - 1) // 2 * d for k, d in zip(self.kernel, self.dilations)]
        return tuple(p - h for p, h in zip(self.pads, half + half))

    def merges_with(self, other: "_Conv") -> bool:
        """Kernels that add up into one conv of the larger kernel (1x1 ignores dilation)."""
        dil_ok = self.dilations == other.dilations or 1 in (max(self.kernel), max(other.kernel))
        return (self.groups == other.groups and self.strides == other.strides and dil_ok
                and (self.out_ch, self.in_per_group) == (other.out_ch, other.in_per_group)
                and self.offsets() is not None and self.offsets() == other.offsets())

    def takes_identity(self) -> bool:
        """An identity branch adds an identity kernel: same channels in and out, stride 1, centred."""
        return (self.strides == (1, 1) and self.out_ch == self.in_per_group * self.groups
                and self.offsets() == (0, 0, 0, 0))


def _summands(add: onnx.NodeProto, g: _Graph, absorbed: set[str]) -> list[str]:
    """The tensors a chain of Adds sums (inner Adds used only by the chain are expanded)."""
    out = []
    for t in add.input:
        inner = g.made_by(t)
        if inner is not None and inner.op_type == "Add" and g.sole_use(g.source(t)):
            absorbed.add(inner.name)
            out += _summands(inner, g, absorbed)
        else:
            out.append(t)
    return out


def _axes(node: onnx.NodeProto, g: _Graph) -> list[int] | None:
    """The ``axes`` of an Unsqueeze or ReduceSum: its second input (opset 13+) or its attribute."""
    if len(node.input) > 1 and node.input[1]:
        tensor = g.consts.get(g.source(node.input[1]))
        return [int(v) for v in onnx.numpy_helper.to_array(tensor).ravel()] if tensor is not None else None
    return list(_attr(node, "axes", [])) or None


def _stacked_terms(node: onnx.NodeProto, g: _Graph) -> list[str] | None:
    """The tensors ``torch.stack([...]).sum(a)`` adds: ReduceSum(keepdims=0) over axis a of a Concat along a
    of tensors each Unsqueezed at a; None for any other ReduceSum."""
    axes = _axes(node, g)
    concat = g.made_by(node.input[0])
    if (_attr(node, "keepdims", 1) != 0 or axes is None or len(axes) != 1 or concat is None
            or concat.op_type != "Concat" or _attr(concat, "axis", None) != axes[0]):
        return None
    terms = []
    for t in concat.input:
        unsqueeze = g.made_by(t)
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or _axes(unsqueeze, g) != axes:
            return None
        terms.append(unsqueeze.input[0])
    return terms


def _branch(tensor: str, g: _Graph) -> tuple[str, onnx.NodeProto | None, list[onnx.NodeProto]]:
    """(the tensor the branch reads, its Conv or None for an identity branch, the branch's nodes)."""
    node = g.made_by(tensor)
    if node is not None and node.op_type == "BatchNormalization":
        before = g.made_by(node.input[0])
        if before is not None and before.op_type == "Conv" and g.sole_use(before.output[0]):
            return g.source(before.input[0]), before, [before, node]
        return g.source(node.input[0]), None, [node]
    if node is not None and node.op_type == "Conv":
        return g.source(node.input[0]), node, [node]
    return g.source(tensor), None, []


def _parallel_group(source: str, branches: list[tuple[onnx.NodeProto | None, list[onnx.NodeProto]]],
                    g: _Graph) -> list[onnx.NodeProto] | None:
    """The nodes of the branches of ``source`` that fold together, or None when fewer than two do."""
    convs = [c for c in (_Conv.of(conv, g) for conv, _ in branches if conv is not None) if c is not None]
    identities = [nodes for conv, nodes in branches if conv is None]
    if not convs:
        return None
    base = max(convs, key=lambda c: c.kernel)
    mergeable = [c for c in convs if c is base or c.merges_with(base)]
    with_identity = bool(identities) and base.takes_identity()
    if len(mergeable) + (1 if with_identity else 0) < 2:
        return None
    keep = {id(c.node) for c in mergeable}
    nodes = [n for conv, ns in branches if conv is not None and id(conv) in keep for n in ns]
    return nodes + ([n for ns in identities for n in ns] if with_identity else [])


def _parallel_convs(g: _Graph) -> tuple[list[FoldFinding], set[str]]:
    findings: list[FoldFinding] = []
    absorbed: set[str] = set()
    used: set[str] = set()
    for add in reversed([n for n in g.nodes if n.op_type in ("Add", "ReduceSum")]):
        if add.name in absorbed:
            continue
        terms = _summands(add, g, absorbed) if add.op_type == "Add" else _stacked_terms(add, g)
        if terms is None:
            continue
        by_source: dict[str, list[tuple[onnx.NodeProto | None, list[onnx.NodeProto]]]] = defaultdict(list)
        for t in terms:
            source, conv, nodes = _branch(t, g)
            by_source[source].append((conv, nodes))
        for source, branches in by_source.items():
            group = _parallel_group(source, branches, g)
            if group is None:
                continue
            names, modules = _where(group + [add])
            used.update(n.name for n in group)
            findings.append(FoldFinding("parallel_convs", names, modules,
                                        f"{_label(add)} sums parallel branches of {source}: "
                                        f"{', '.join(_label(n) for n in group)}: they fold into one conv"))
    return findings[::-1], used  # in graph order


def check_fold_coverage(model: onnx.ModelProto, kept_pairs: Sequence[KeptPair] = ()) -> FoldCoverageReport:
    """Everything foldable left in ``model``'s graph, and the BatchNormalization nodes kept (with the Conv+BN
    pairs the fold kept on purpose, ``kept_pairs``, as kept with their reason); never raises."""
    g = _Graph(model.graph)
    parallel, in_branches = _parallel_convs(g)
    bn_findings, kept = _batchnorms(g, in_branches, kept_pairs)
    return FoldCoverageReport(findings=bn_findings + _dynamic_weights(model.graph) + parallel, kept=kept)
