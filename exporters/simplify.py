"""What changes an exported graph without changing its function: onnxsim's simplification (kept only
when the outputs still match) and the node-count difference the deploy rewrites make."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import onnx

from deploy.core.errors import first_line
from deploy.core.metrics import Tolerance, compare, looks_like_class_scores
from exporters.onnx import captured_output, check_onnx, set_metadata
from validators.runtimes.onnxruntime import OrtRuntime


def op_histogram(proto: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (``domain::Op`` outside the default domain), sorted by name."""
    counts = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in proto.graph.node)
    return dict(sorted(counts.items()))


@dataclass
class GraphDiff:
    """Two graphs of one model compared: node counts and the op types whose count changed."""

    nodes_before: int
    nodes_after: int
    op_changes: dict[str, list[int]]  # op -> [count before, count after]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """``432 -> 336 nodes (BatchNormalization -16, Softmax -16, AveragePool +16)``, removals first."""
        deltas = sorted(((op, b - a) for op, (a, b) in self.op_changes.items()), key=lambda d: (d[1] > 0, d[1]))
        ops = ", ".join(f"{op} {d:+d}" for op, d in deltas) or "no op-count change"
        return f"{self.nodes_before} -> {self.nodes_after} nodes ({ops})"


def graph_diff(before: onnx.ModelProto, after: onnx.ModelProto) -> GraphDiff:
    """How ``after`` differs from ``before`` in nodes per op type."""
    a, b = op_histogram(before), op_histogram(after)
    changes = {op: [a.get(op, 0), b.get(op, 0)] for op in sorted(set(a) | set(b)) if a.get(op, 0) != b.get(op, 0)}
    return GraphDiff(len(before.graph.node), len(after.graph.node), changes)


def simplified_structure(model_proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim's graph of ``model_proto``, to count its nodes (the rewrite diff's graph without the
    rewrites): neither the checker nor ONNX Runtime checks it, nothing ships it; the input graph when
    onnxsim fails."""
    import onnxsim  # noqa: PLC0415 - heavy (its own onnxruntime and protobuf stack): only simplifying needs it

    try:
        with captured_output({}):
            candidate, _ok = onnxsim.simplify(model_proto, check_n=0)
    except Exception:  # noqa: BLE001 - onnxsim raises plain RuntimeError/ValueError from C++: the graph stays as exported
        return model_proto
    return candidate


@dataclass
class SimplifyResult:
    """What onnxsim did, or why its graph was rejected (``applied=False`` with a ``reason``)."""

    applied: bool
    reason: str | None
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    op_changes: dict[str, list[int]]
    initializers_before: int
    initializers_after: int
    max_abs_err: float | None
    max_rel_err: float | None
    seconds: float
    onnxsim_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.applied:
            return f"onnxsim NOT applied, unsimplified graph kept: {self.reason}"
        changes = ", ".join(f"{op} {a}->{b}" for op, (a, b) in self.op_changes.items()) or "no op-count change"
        return f"onnxsim: {self.nodes_before} -> {self.nodes_after} nodes ({changes})"


def _interface(proto: onnx.ModelProto) -> list[tuple[str, tuple[str | int, ...]]]:
    sig = []
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = tuple(d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim)
        sig.append((vi.name, dims))
    return sig


@dataclass
class Simplified:
    """What ``simplify_checked`` kept: the graph, the record of what onnxsim did, and the ONNX Runtime
    session that checked that graph (None when none did), for the caller to run again."""

    model: onnx.ModelProto
    result: SimplifyResult
    session: OrtRuntime | None


def simplify_onnx(
    model_proto: onnx.ModelProto,
    input_shape: Sequence[int],
    *,
    tol: Any = None,
    seed: int = 0,
) -> tuple[onnx.ModelProto, SimplifyResult]:
    """Run onnxsim; keep its graph only if it passes the checker, keeps the interface (names,
    symbolic batch) and reproduces the outputs within ``tol`` (ONNX Runtime CPU, one seeded
    input at batch 2, or the fixed batch). Otherwise return the input graph and say why.
    Node and model ``metadata_props`` (module scopes, our metadata) are carried over by node name.
    """
    done = simplify_checked(model_proto, input_shape, tol=tol, seed=seed)
    return done.model, done.result


def simplify_checked(
    model_proto: onnx.ModelProto,
    input_shape: Sequence[int],
    *,
    tol: Any = None,
    seed: int = 0,
    threads: int | None = None,
    name: str | None = None,
) -> Simplified:
    """``simplify_onnx``, keeping the ONNX Runtime session (intra-op ``threads``, called ``name``) that
    checked the graph it returns: the parity check runs the same graph next."""
    import onnxsim  # noqa: PLC0415 - heavy (its own onnxruntime and protobuf stack): only the simplify step needs it

    tol = tol or Tolerance()
    before = op_histogram(model_proto)
    start = time.perf_counter()
    simplified, reason, metrics = None, None, None
    sessions: dict[str, OrtRuntime] = {}
    stage = "onnxsim failed"
    try:
        captured: dict[str, Any] = {}
        with captured_output(captured):
            candidate, ok = onnxsim.simplify(model_proto, check_n=0)
        if not ok:
            raise RuntimeError("onnxsim reported that its simplified graph failed its own check")
        if tol.rtol >= 0 and tol.atol >= 0 and _same_computation(model_proto, candidate):
            # node for node and weight for weight the graph it was given: the same outputs, exactly;
            # the exported (checked) graph stays, and no session has to run it to say so
            return _unchanged(model_proto, before, start, onnxsim)
        _carry_metadata(model_proto, candidate)
        stage = "the simplified graph fails onnx.checker"
        check_onnx(candidate)
        if _interface(candidate) != _interface(model_proto):
            raise RuntimeError(f"onnxsim changed the model interface {_interface(model_proto)} -> {_interface(candidate)}")
        stage = "could not verify the simplified graph with ONNX Runtime"
        dim0 = model_proto.graph.input[0].type.tensor_type.shape.dim[0]
        batch = dim0.dim_value if dim0.HasField("dim_value") else 2
        x = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)
        sessions["before"] = OrtRuntime(model_proto, threads=threads, name=name)
        sessions["after"] = OrtRuntime(candidate, threads=threads, name=name)
        metrics, bad = _same_outputs(sessions["before"], sessions["after"], x, tol)
        if bad:
            reason = "onnxsim changed the outputs: " + "; ".join(bad)
        else:
            simplified = candidate
    except Exception as exc:  # noqa: BLE001 - onnxsim raises plain RuntimeError/ValueError from C++: kept as a reason
        reason = f"{stage}: {first_line(exc)}"
    result_model = simplified if simplified is not None else model_proto
    after = op_histogram(result_model)
    changes = {op: [before.get(op, 0), after.get(op, 0)] for op in sorted(set(before) | set(after))
               if before.get(op, 0) != after.get(op, 0)}
    result = SimplifyResult(
        applied=simplified is not None, reason=reason,
        nodes_before=len(model_proto.graph.node), nodes_after=len(result_model.graph.node),
        ops_before=before, ops_after=after, op_changes=changes,
        initializers_before=len(model_proto.graph.initializer), initializers_after=len(result_model.graph.initializer),
        max_abs_err=metrics["max_abs_err"] if metrics else None, max_rel_err=metrics["max_rel_err"] if metrics else None,
        seconds=time.perf_counter() - start, onnxsim_version=str(getattr(onnxsim, "__version__", "unknown")),
    )
    return Simplified(result_model, result, sessions.get("after" if simplified is not None else "before"))


def _node_key(node: onnx.NodeProto) -> tuple[Any, ...]:
    return (node.domain, node.op_type, tuple(node.input), tuple(node.output),
            tuple(a.SerializeToString() for a in node.attribute))


def _same_computation(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """Whether ``b`` computes what ``a`` does by construction: the same interface, opsets, functions,
    nodes (in order, attributes included; names and metadata aside) and initializers (bytes included),
    every node a standard ONNX op."""
    ga, gb = a.graph, b.graph
    if any(n.domain not in ("", "ai.onnx") for n in ga.node):  # a custom op may not even run: checked the long way
        return False
    if (_interface(a) != _interface(b) or list(a.opset_import) != list(b.opset_import) or len(a.functions) != len(b.functions)
            or len(ga.node) != len(gb.node) or len(ga.initializer) != len(gb.initializer) or len(ga.sparse_initializer)
            or len(gb.sparse_initializer)):
        return False
    if any(fa.SerializeToString() != fb.SerializeToString() for fa, fb in zip(a.functions, b.functions)):
        return False
    if any(_node_key(na) != _node_key(nb) for na, nb in zip(ga.node, gb.node)):
        return False
    by_name = {t.name: t for t in gb.initializer}
    return all(t.name in by_name and t.SerializeToString() == by_name[t.name].SerializeToString() for t in ga.initializer)


def _unchanged(model_proto: onnx.ModelProto, ops: dict[str, int], start: float, onnxsim: Any) -> Simplified:
    """onnxsim's graph was the one it was given: applied, nothing changed, no error."""
    result = SimplifyResult(
        applied=True, reason=None, nodes_before=len(model_proto.graph.node), nodes_after=len(model_proto.graph.node),
        ops_before=ops, ops_after=dict(ops), op_changes={}, initializers_before=len(model_proto.graph.initializer),
        initializers_after=len(model_proto.graph.initializer), max_abs_err=0.0, max_rel_err=0.0,
        seconds=time.perf_counter() - start, onnxsim_version=str(getattr(onnxsim, "__version__", "unknown")))
    return Simplified(model_proto, result, None)


def _same_outputs(before: OrtRuntime, after: OrtRuntime, x: np.ndarray,
                  tol: Tolerance) -> tuple[dict[str, float], list[str]]:
    """Every output of ``after`` against ``before`` on ``x``: the worst output's metrics and the violations."""
    ref, out = before.run_all(x), after.run_all(x)
    worst: dict[str, float] = {}
    bad: list[str] = []
    for name, value in ref.items():
        m = compare(value, out[name])
        if not worst or m["max_rel_err"] > worst["max_rel_err"]:
            worst = m
        found = tol.violations(m, check_top1=looks_like_class_scores(value.shape))
        bad += [f"{name}: {v}" if len(ref) > 1 else v for v in found]
    return worst, bad


def _carry_metadata(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """``src``'s model metadata replaces ``dst``'s (onnxsim adds some twenty ``onnxsim.*`` keys of its
    run's settings: clutter in a deployed file); node metadata is carried by node name."""
    del dst.metadata_props[:]
    set_metadata(dst, {p.key: p.value for p in src.metadata_props})
    by_name = {n.name: n for n in src.graph.node if n.name}
    for node in dst.graph.node:
        old = by_name.get(node.name)
        if old is not None and not node.metadata_props:
            node.metadata_props.extend(old.metadata_props)
