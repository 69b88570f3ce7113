"""The deploy rewrites: exact changes of the graph, never of the function (docs/architecture.md).

The layers say what they can do (``deploy.layers.rewrite_blocks``: ``absorb_batchnorm``,
``rewritten``, ``input_split``); the passes here find where, with torch.fx (paper layers
and rewrite outputs as leaves), and measure every replacement on the float64 probe:

1. ``absorb_batchnorms``: a layer with ``absorb_batchnorm`` whose output feeds nothing but a
   BatchNorm becomes the module it returns, and the BN becomes ``nn.Identity`` (run before
   the Conv+BN fusion, which only pairs convolutions);
2. ``rewrite_layers``: every other layer with ``rewritten()`` (outer layers first) becomes its
   rewrite; then every layer with ``input_split`` whose input is a convolution's output
   (through a ReLU) used by nothing else gets the convolution split along those channel
   counts (``SplitConv2d``): the block holding both is re-traced into a ``torch.fx.GraphModule``
   that hands the layer the parts.

A layer that refuses (``RewriteRefusedError``) is kept, with the reason, in the report.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from deploy.core.errors import first_line
from deploy.fold.probe import capture_inputs, replacement_error
from deploy.layers.rewrite_blocks import DeployRewrite, RewriteRefusedError, SplitConv2d

_HOOKS = ("absorb_batchnorm", "rewritten", "input_split", "switch_to_deploy")


@dataclass
class RewriteRow:
    """One rewrite: the module it replaced, what it did, and the error it made on the probe."""

    name: str
    detail: str
    max_abs_error: float
    max_rel_error: float


class _RewriteTracer(torch.fx.Tracer):
    """Trace through containers and blocks, stopping at layers with a fold or rewrite hook."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (any(hasattr(m, h) for h in _HOOKS) or getattr(m, "folds_to_conv", False)
                or super().is_leaf_module(m, qualname))


def _trace(module: nn.Module, kept: list[str], what: str) -> torch.fx.Graph | None:
    try:
        return _RewriteTracer().trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises many types on untraceable code
        kept.append(f"{what} skipped: torch.fx could not trace the model ({first_line(exc, 200)})")
        return None


def _call_counts(graph: torch.fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    return counts


def _layer_bn_pairs(model: nn.Module, graph: torch.fx.Graph) -> list[tuple[str, str]]:
    """(layer, bn) where a layer with ``absorb_batchnorm`` feeds nothing but the BN."""
    calls = _call_counts(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(str(node.target)), _BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        layer_name, bn_name = str(src.target), str(node.target)
        if not hasattr(model.get_submodule(layer_name), "absorb_batchnorm"):
            continue
        if len(src.users) == 1 and calls[layer_name] == 1 and calls[bn_name] == 1:
            pairs.append((layer_name, bn_name))
    return pairs


def absorb_batchnorms(model: nn.Module, probe: torch.Tensor | None) -> tuple[list[RewriteRow], list[str]]:
    """Pass 1 (module docstring), in place on ``model``."""
    rows: list[RewriteRow] = []
    kept: list[str] = []
    graph = _trace(model, kept, "layer+BatchNorm rewrite")
    if graph is None:
        return rows, kept
    pairs = _layer_bn_pairs(model, graph)
    inputs = capture_inputs(model, {layer for layer, _ in pairs}, probe)
    for layer_name, bn_name in pairs:
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        try:
            new = layer.absorb_batchnorm(bn)  # type: ignore[operator]  # the pairs' layers have it
        except RewriteRefusedError as exc:
            kept.append(f"{layer_name}: {type(layer).__name__}+{type(bn).__name__} not rewritten ({exc})")
            continue
        err = replacement_error(nn.Sequential(layer, bn), new, inputs.get(layer_name))
        model.set_submodule(layer_name, new)
        model.set_submodule(bn_name, nn.Identity())
        rows.append(RewriteRow(layer_name, f"{type(layer).__name__}+{type(bn).__name__} ({bn_name}) -> "
                                           f"{type(new).__name__}", *err))
    return rows, kept


def _rewrite_standalone(model: nn.Module, probe: torch.Tensor | None, rows: list[RewriteRow],
                        kept: list[str]) -> None:
    names = [n for n, m in model.named_modules()
             if n and hasattr(m, "rewritten") and not isinstance(m, DeployRewrite)]
    outer = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    inputs = capture_inputs(model, set(outer), probe)
    for name in outer:
        layer = model.get_submodule(name)
        try:
            new = layer.rewritten()  # type: ignore[operator]  # selected above for having it
        except RewriteRefusedError as exc:
            kept.append(f"{name}: {type(layer).__name__} not rewritten ({exc})")
            continue
        err = replacement_error(layer, new, inputs.get(name))
        model.set_submodule(name, new)
        rows.append(RewriteRow(name, f"{type(layer).__name__} -> {type(new).__name__}", *err))


def rewrite_layers(model: nn.Module, probe: torch.Tensor | None) -> tuple[list[RewriteRow], list[str]]:
    """Pass 2 (module docstring), in place on ``model``: standalone rewrites, then producer splits."""
    rows: list[RewriteRow] = []
    kept: list[str] = []
    _rewrite_standalone(model, probe, rows, kept)
    _split_producers(model, probe, rows, kept)
    return rows, kept


# ---------------------------------------------------------------- producer splits


@dataclass(frozen=True)
class _Split:
    """A convolution (through ``relu``) whose only consumer ``layer`` slices it into ``sizes``."""

    host: str
    conv: str
    layer: str
    relu: bool
    sizes: tuple[int, ...]


def _is_relu(model: nn.Module, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(str(node.target)), nn.ReLU)
    return node.op == "call_function" and node.target in (F.relu, torch.relu) and not node.kwargs.get("inplace")


def _is_identity(model: nn.Module, node: torch.fx.Node) -> bool:
    return node.op == "call_module" and isinstance(model.get_submodule(str(node.target)), nn.Identity)


def _producer_chain(model: nn.Module, node: torch.fx.Node) -> tuple[torch.fx.Node, list[torch.fx.Node], bool] | None:
    """(conv node, the nodes between it and ``node``'s call, whether one is a ReLU): the
    nodes in between are Identities (folded BNs) and at most one ReLU, each used once."""
    src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    between: list[torch.fx.Node] = []
    relu = False
    while isinstance(src, torch.fx.Node) and len(src.users) == 1:
        if _is_identity(model, src) or (not relu and _is_relu(model, src)):
            relu = relu or _is_relu(model, src)
            between.append(src)
            src = src.args[0] if src.args else None
            continue
        if src.op == "call_module" and isinstance(model.get_submodule(str(src.target)), nn.Conv2d):
            return src, between, relu
        return None
    return None


def _find_split(model: nn.Module, node: torch.fx.Node, calls: dict[str, int]) -> _Split | None:
    """The split the ``input_split`` layer called at ``node`` asks for, if its producer allows one."""
    chain = _producer_chain(model, node)
    if chain is None:
        return None
    conv_node, _, relu = chain
    layer_name, conv_name = str(node.target), str(conv_node.target)
    conv = model.get_submodule(conv_name)
    sizes = tuple(model.get_submodule(layer_name).input_split)  # type: ignore[arg-type]
    if conv.groups != 1 or calls[conv_name] != 1 or sum(sizes) != conv.out_channels:
        return None
    host = _common_parent(conv_name, layer_name)
    return _Split(host, conv_name, layer_name, relu, sizes) if host else None


def _common_parent(*names: str) -> str:
    parents = [n.split(".")[:-1] for n in names]
    common = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _local(host: str, name: str) -> str:
    return name[len(host) + 1:]


def _host_graph(host: nn.Module, splits: list[_Split]) -> torch.fx.GraphModule:
    """``host`` re-traced with each split's convolution returning its parts straight to the layer."""
    graph = _RewriteTracer().trace(host)
    wanted = {_local(s.host, s.layer): s for s in splits}
    for node in list(graph.nodes):
        split = wanted.get(str(node.target)) if node.op == "call_module" else None
        chain = _producer_chain(host, node) if split is not None else None
        if split is None or chain is None:
            continue
        conv_node, between, _ = chain
        node.args = (conv_node,)
        for dropped in between:  # nearest the layer first: each is unused once its consumer is gone
            graph.erase_node(dropped)
        conv_local = _local(split.host, split.conv)
        conv = host.get_submodule(conv_local)
        assert isinstance(conv, nn.Conv2d)  # what _find_split checked
        host.set_submodule(conv_local, SplitConv2d(conv, split.sizes, split.relu))
    graph.lint()
    return torch.fx.GraphModule(host, graph, class_name=f"{type(host).__name__}Split")


def _split_producers(model: nn.Module, probe: torch.Tensor | None, rows: list[RewriteRow],
                     kept: list[str]) -> None:
    graph = _trace(model, kept, "producer split")
    if graph is None:
        return
    calls = _call_counts(graph)
    by_host: dict[str, list[_Split]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and hasattr(model.get_submodule(str(node.target)), "input_split"):
            split = _find_split(model, node, calls)
            if split is not None:
                by_host.setdefault(split.host, []).append(split)
            else:
                kept.append(f"{node.target}: its input is sliced along channels (the producer is not a "
                            "convolution, through at most a ReLU, used by nothing else inside a block)")
    inputs = capture_inputs(model, set(by_host), probe)
    for host_name, splits in by_host.items():
        before = copy.deepcopy(model.get_submodule(host_name))
        try:
            new = _host_graph(model.get_submodule(host_name), splits)
        except Exception as exc:  # noqa: BLE001 - fx raises many types on untraceable code
            model.set_submodule(host_name, before)
            kept.append(f"{host_name}: producer split skipped ({first_line(exc, 200)})")
            continue
        err = replacement_error(before, new, inputs.get(host_name))
        model.set_submodule(host_name, new)
        for s in splits:
            rows.append(RewriteRow(s.conv, f"Conv2d split into {list(s.sizes)} output channels for {s.layer}", *err))

