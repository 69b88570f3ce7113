"""First-diverging-layer search: torch forward hooks vs every intermediate ONNX tensor.

Used by ``validators.parity.first_divergence`` when parity fails.

How a torch module is matched to an ONNX tensor:

1. Every node output of a copy of the ONNX graph becomes a graph output; one ONNX Runtime
   run gives every intermediate tensor. Forward hooks on every (non-root) module record
   each call's output, in execution order (post-order: a child finishes before its parent).
2. Scopes. The dynamo exporter stores the module path of every node in the node metadata
   ``pkg.torch.onnx.name_scopes``; the TorchScript exporter encodes it in node names
   (``/layer1/layer1.0/conv1/Conv``). A module's output tensor is the last "exit" tensor of
   its scope (produced inside, consumed outside) with the torch output's shape; a module
   called k times maps its k-th call to its k-th exit. A module with no node (a Conv whose
   BN the exporter fused, an Identity) is skipped: its output does not exist in the graph.
3. Without scope information (e.g. metadata stripped) a module output is "matched" when any
   intermediate tensor of the same shape agrees within the tolerance.
4. A mismatching module is skipped when its consumer module's torch output matches the
   same tensor (the exporter fused the two, e.g. Conv+BN under the Conv's name). The first
   remaining mismatch is the divergence. When the diverging tensor comes from a Conv/Gemm
   whose weight initializer is named ``<module>.weight``, that module is named: after a
   Conv+BN fusion the Conv's weight holds both.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from deploy.core.metrics import Tolerance, compare
from validators.runtimes.onnxruntime import all_node_outputs
from validators.runtimes.pytorch import named_outputs

_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclass
class Divergence:
    """Where torch and ONNX first disagree."""

    module: str
    module_type: str
    compared_module: str
    onnx_node: str | None
    onnx_op: str | None
    onnx_tensor: str | None
    max_abs_err: float
    bound: float
    method: str

    def describe(self) -> str:
        node = f" (ONNX node {self.onnx_node} [{self.onnx_op}] -> {self.onnx_tensor})" if self.onnx_node else ""
        via = f", compared at {self.compared_module}" if self.compared_module != self.module else ""
        return (
            f"{self.module} [{self.module_type}]{node}: max abs error {self.max_abs_err:.3g} > "
            f"{self.bound:.3g}{via}; matched by {self.method}"
        )


@dataclass
class _Call:
    module: str
    index: int
    output: np.ndarray
    out_id: int
    in_ids: tuple[int, ...]


def _torch_calls(model: nn.Module, x: np.ndarray) -> tuple[list[_Call], dict[str, np.ndarray]]:
    calls: list[_Call] = []
    counts: dict[str, int] = defaultdict(int)
    handles = []
    alive: list[torch.Tensor] = []  # keeps outputs referenced so that id() values are never reused

    def make_hook(name: str):
        def hook(_mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                return
            in_ids = tuple(id(t) for t in inputs if isinstance(t, torch.Tensor))
            alive.append(output)
            calls.append(_Call(name, counts[name], output.detach().float().cpu().numpy().copy(), id(output), in_ids))
            counts[name] += 1

        return hook

    for name, mod in model.named_modules():
        if name:
            handles.append(mod.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    return calls, {name: t.detach().float().cpu().numpy() for name, t in named_outputs(out)}


def _all_intermediates(onnx_model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    return {n: v for n, v in all_node_outputs(onnx_model, x).items() if v.dtype.kind == "f"}


def _scope_chain(node: onnx.NodeProto, modules: set[str]) -> list[str]:
    """Module qualnames (outermost first) that ``node`` belongs to, from metadata or its name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                items = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            return [s for s in items[1:-1] if s in modules]
    if not node.name.startswith("/"):
        return []
    chain, current = [], ""
    for seg in node.name.split("/")[1:-1]:
        current = seg if (not current or seg.startswith(current + ".")) else f"{current}.{seg}"
        name = current
        if name not in modules:
            stripped = re.sub(r"_\d+$", "", name)
            name = stripped if stripped in modules else name
        if name in modules:
            chain.append(name)
            current = name
    return chain


def _exits(onnx_model: onnx.ModelProto, modules: set[str]) -> dict[str, list[str]]:
    """For every module, the tensors leaving its scope, in graph (topological) order."""
    nodes = list(onnx_model.graph.node)
    chains = [set(_scope_chain(n, modules)) for n in nodes]
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for t in n.input:
            consumers[t].append(i)
    graph_outputs = {o.name for o in onnx_model.graph.output}
    exits: dict[str, list[str]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for mod in chains[i]:
            for t in n.output:
                if t and (t in graph_outputs or any(mod not in chains[j] for j in consumers[t])):
                    exits[mod].append(t)
    return exits


def _weight_owner(node: onnx.NodeProto | None, inits: set[str], modules: set[str]) -> str | None:
    if node is None or node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
        return None
    w = node.input[1]
    if w in inits and w.endswith(".weight") and w[: -len(".weight")] in modules:
        return w[: -len(".weight")]
    return None


class _Search:
    """The torch calls of one forward pass matched against every intermediate ONNX tensor."""

    def __init__(self, model: nn.Module, onnx_model: onnx.ModelProto, x: np.ndarray, tol: Tolerance) -> None:
        self.calls, self.final = _torch_calls(model, x)
        self.values = _all_intermediates(onnx_model, x)
        self.mods = dict(model.named_modules())
        self.modules = set(self.mods) - {""}
        self.exits = _exits(onnx_model, self.modules)
        self.producer = {t: n for n in onnx_model.graph.node for t in n.output}
        self.inits = {i.name for i in onnx_model.graph.initializer}
        self.use_scopes = bool(self.exits)
        self.tol = tol
        self.n_calls: dict[str, int] = defaultdict(int)
        for c in self.calls:
            self.n_calls[c.module] += 1
        self.same_shape: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for name, v in self.values.items():
            self.same_shape[v.shape].append(name)

    def ok(self, ref: np.ndarray, name: str) -> bool:
        out = self.values.get(name)
        return out is not None and out.shape == ref.shape and not self.tol.violations(compare(ref, out), check_top1=False)

    def mapped(self, call: _Call) -> str | None:
        """The ONNX tensor of this call, by module scopes (the k-th exit for the k-th call)."""
        cands = [t for t in self.exits.get(call.module, []) if t in self.values
                 and self.values[t].shape == call.output.shape]
        if not cands:
            return None
        if self.n_calls[call.module] == 1:
            return cands[-1]
        return cands[call.index] if len(cands) == self.n_calls[call.module] else None

    def consumer(self, i: int) -> _Call | None:
        call = self.calls[i]
        return next((c for c in self.calls[i + 1:] if call.out_id in c.in_ids and c.module != call.module), None)

    def mismatch(self, i: int) -> tuple[str | None, str] | None:
        """(ONNX tensor, how it was matched) when call ``i`` diverges, else None."""
        call, nxt = self.calls[i], self.consumer(i)
        if self.use_scopes:
            tensor = self.mapped(call)
            if tensor is None or self.ok(call.output, tensor):
                return None
            if nxt is not None and self.ok(nxt.output, tensor):
                return None  # fused with its consumer (e.g. Conv+BN kept under the Conv's name)
            return tensor, "module scopes"
        if any(self.ok(call.output, t) for t in self.same_shape.get(call.output.shape, [])):
            return None
        if nxt is not None and any(self.ok(nxt.output, t) for t in self.same_shape.get(nxt.output.shape, [])):
            return None
        tensor = _closest(call.output, self.same_shape.get(call.output.shape, []), self.values)
        return tensor, "values (no scope information in the graph; ONNX tensor = closest one)"

    def divergence(self, call: _Call, tensor: str | None, method: str) -> Divergence:
        node = self.producer.get(tensor) if tensor else None
        owner = (_weight_owner(node, self.inits, self.modules) if self.use_scopes else None) or call.module
        err = compare(call.output, self.values[tensor])["max_abs_err"] if tensor else float("inf")
        return Divergence(
            module=owner, module_type=type(self.mods[owner]).__name__, compared_module=call.module,
            onnx_node=node.name if node is not None else None, onnx_op=node.op_type if node is not None else None,
            onnx_tensor=tensor, max_abs_err=err,
            bound=self.tol.bound(float(np.abs(call.output).max()) if call.output.size else 0.0), method=method,
        )


def locate_divergence(model: nn.Module, onnx_model: onnx.ModelProto, x: np.ndarray,
                      tol: Tolerance) -> Divergence | None:
    """The first module whose output disagrees with the ONNX graph beyond ``tol``, or None."""
    search = _Search(model, onnx_model, x, tol)
    for i, call in enumerate(search.calls):
        found = search.mismatch(i)
        if found is not None:
            return search.divergence(call, *found)
    for out_name, final in search.final.items():
        if out_name in search.values and not search.ok(final, out_name):
            m = compare(final, search.values[out_name])
            return Divergence("<top-level forward>", type(model).__name__, "<top-level forward>", None, None, out_name,
                              m["max_abs_err"], tol.bound(m["max_ref"]), f"final output {out_name}")
    return None


def _closest(ref: np.ndarray, names: list[str], values: dict[str, np.ndarray]) -> str | None:
    if not names:
        return None
    return min(names, key=lambda n: float(np.abs(values[n].astype(np.float64) - ref).max()))
