"""fold_model(): turn a trained network into its deploy form, exactly, and prove it.

Three passes, in this order (docs/architecture.md, "Conventions"):

1. every layer that folds into one convolution (``folds_to_conv``: CoC, DO-Conv) is
   replaced in its parent by the ``nn.Conv2d`` its ``to_conv2d()`` returns;
2. every other layer that folds itself by one of the re-parameterization conventions
   (``deploy.fold.reparam``: ``fuse()`` returning its replacement, ``reparameterize()``,
   ``switch_to_deploy()`` — timm's order) is folded, walking the module tree top-down as
   timm's ``reparameterize_model`` does: SCConv, SPConv and IC fold their Conv+BN pairs,
   RepVGG / MobileOne blocks merge their branches;
3. every ``nn.Conv2d`` whose output feeds nothing but a ``BatchNorm2d`` — or a subclass of
   it, such as timm's ``BatchNormAct2d`` — is fused with it (the pairs are found with
   torch.fx, paper layers and norms as leaves); the BN becomes ``nn.Identity``, a subclass
   becomes the ``PostNorm`` of what it applies after normalising (its activation).

With ``rewrite`` (the default) the deploy rewrites of ``deploy.fold.rewrite`` run around
pass 3: layers absorb the BatchNorm after them before it, the other rewrites after it.

The folding itself runs in float64 on a copy, so the per-layer errors in the report are
measured on a float64 probe input and the float32 kernels are rounded only once.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, field

import torch
import torch.fx
from torch import nn

from deploy.core.errors import BadInputError, first_line
from deploy.fold.probe import (
    FLOAT32,
    FLOAT64,
    LAYER_LOCAL,
    Folded,
    Workbench,
    capture_inputs,
    outputs_error,
    probe_input,
    probe_outputs,
)
from deploy.fold.reparam import apply_convention, convention_of, post_norm
from deploy.fold.residual import absorb_identity, residual_convs
from deploy.fold.rewrite import RewriteRow, absorb_batchnorms, rewrite_layers
from deploy.layers.conv_bn import fuse_conv_bn
from deploy.load.module import check_eval_mode


@dataclass
class FoldRow:
    """One folded layer: its qualified name, what became what, and the error it made.

    Rewrites (``deploy.fold.rewrite``) have the kind ``rewrite`` and say what they did in ``detail``;
    ``precision`` is what the errors were measured in (``deploy.fold.probe``: ``float64``,
    ``float64 layer-local`` or ``float32``).
    """

    name: str
    kind: str
    max_abs_error: float
    max_rel_error: float
    detail: str = ""
    precision: str = FLOAT64


@dataclass(frozen=True)
class KeptPair:
    """A Conv+BN pair left unfused on purpose: the tensors of it that something else in the model reads."""

    conv: str
    bn: str
    shared: tuple[str, ...]


@dataclass
class FoldReport:
    """Every fold fold_model() made, plus what it had to leave alone and why."""

    rows: list[FoldRow] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    #: the Conv+BN pairs among ``kept`` whose tensors are read elsewhere (fold coverage names them as kept)
    kept_pairs: list[KeptPair] = field(default_factory=list)
    probe_shape: tuple[int, ...] | None = None
    #: (max abs, max rel) error of the whole deploy form against the model on the float64 probe: what the
    #: deployed model computes, which each row's layer-local measure alone cannot show (tied weights)
    end_to_end: tuple[float, float] | None = None
    #: how the folds were made and measured: ``float64`` (the whole model in float64) or ``float64 layer-local``
    #: (the model does not run in float64: each fold on float64 copies of its layer, float32 where that fails)
    precision: str = FLOAT64
    precision_reason: str = ""

    @property
    def worst_rel_error(self) -> float:
        return max((r.max_rel_error for r in self.rows), default=0.0)

    @property
    def rewrites(self) -> list[FoldRow]:
        return [r for r in self.rows if r.kind == "rewrite"]

    def to_dict(self) -> dict:
        return {
            "probe_shape": list(self.probe_shape) if self.probe_shape else None,
            "worst_rel_error": self.worst_rel_error,
            "rows": [asdict(r) for r in self.rows],
            "kept": list(self.kept),
            "end_to_end": list(self.end_to_end) if self.end_to_end else None,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
        }


def _is_paper_layer(module: nn.Module) -> bool:
    return convention_of(module) is not None or getattr(module, "folds_to_conv", False)


class _PaperLayerTracer(torch.fx.Tracer):
    """Trace through containers and blocks, stopping at layers that fold themselves and at
    BatchNorms (a subclass is one call, whatever its forward does inside). Buffers read outside
    their module become ``get_attr`` nodes (not constants), so such reads can be found."""

    proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_paper_layer(m) or isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)


def _row(name: str, kind: str, folded: Folded) -> FoldRow:
    return FoldRow(name, kind, folded.max_abs_error, folded.max_rel_error, precision=folded.precision)


def _to_conv2d(layer: nn.Module) -> nn.Module:
    return layer.to_conv2d()  # type: ignore[operator]  # folds_to_conv layers have it


def _fold_paper_convs(model: nn.Module, bench: Workbench, probe: torch.Tensor | None, report: FoldReport) -> None:
    names = [n for n, m in model.named_modules() if getattr(m, "folds_to_conv", False)]
    inputs = capture_inputs(model, set(names), probe)
    for name in names:
        layer = model.get_submodule(name)
        folded = bench.fold_one(layer, _to_conv2d, inputs.get(name), name)
        model.set_submodule(name, folded.module)
        report.rows.append(_row(name, f"{type(layer).__name__}->Conv2d", folded))


def _apply_conventions(model: nn.Module, bench: Workbench, probe: torch.Tensor | None, report: FoldReport) -> None:
    """Pass 2: every module that folds itself by a convention, top-down (timm's walk), one row each."""
    names = {n for n, m in model.named_modules() if n and convention_of(m) is not None}
    if names:
        _walk_conventions(model, "", bench, capture_inputs(model, names, probe), report)


def _walk_conventions(parent: nn.Module, prefix: str, bench: Workbench, inputs: dict[str, torch.Tensor],
                      report: FoldReport) -> None:
    for child_name, child in list(parent.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        method = convention_of(child)
        if method is not None:
            kind = f"{type(child).__name__}.{method}()"
            folded = bench.fold_one(child, functools.partial(apply_convention, method=method, where=name),
                                    inputs.get(name), name)
            child = folded.module
            setattr(parent, child_name, child)
            if not folded.unchanged:  # an idempotent call on an already folded layer is no fold
                report.rows.append(_row(name, kind, folded))
        _walk_conventions(child, name, bench, inputs, report)


def _shared_tensors(model: nn.Module) -> set[str]:
    """Qualified names of parameters and buffers that one tensor holds under several names (tied weights)."""
    names: dict[int, list[str]] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        names.setdefault(id(t), []).append(name)
    return {n for group in names.values() if len(group) > 1 for n in group}


def _outside_users(conv_name: str, bn_name: str, read: set[str], shared: set[str]) -> list[str]:
    """The conv's and the BN's tensors that something besides the pair reads (a fold would change them)."""
    prefixes = (f"{conv_name}.", f"{bn_name}.")
    return sorted(t for t in read | shared if t.startswith(prefixes))


def _conv_bn_pairs(model: nn.Module, report: FoldReport) -> tuple[list[tuple[str, str]], set[str]]:
    """(conv name, bn name) pairs where the BN is the conv output's only consumer and no other code
    reads the conv's weights or the BN's parameters and statistics (a ``get_attr`` in the traced
    graph, or the same tensor registered under another name). Also the BNs kept for that reason."""
    try:
        graph = _PaperLayerTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types on untraceable code
        report.kept.append(f"Conv+BN search fell back to nn.Sequential order: torch.fx could not trace the model "
                           f"({first_line(exc, 200)})")
        shared_seq, pairs = _shared_tensors(model), []
        for conv_name, bn_name in _sequential_pairs(model):
            if not _keep_tied(report, conv_name, bn_name, _outside_users(conv_name, bn_name, set(), shared_seq)):
                pairs.append((conv_name, bn_name))
        return pairs, set()
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    read = {str(n.target) for n in graph.nodes if n.op == "get_attr"}
    shared = _shared_tensors(model)
    pairs, tied = [], set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(str(node.target)), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        conv_name, bn_name = str(src.target), str(node.target)
        if not isinstance(model.get_submodule(conv_name), nn.Conv2d):
            continue
        if len(src.users) != 1 or calls[conv_name] != 1 or calls[bn_name] != 1:
            continue
        if _keep_tied(report, conv_name, bn_name, _outside_users(conv_name, bn_name, read, shared)):
            tied.add(bn_name)
        else:
            pairs.append((conv_name, bn_name))
    return pairs, tied


def _keep_tied(report: FoldReport, conv_name: str, bn_name: str, users: list[str]) -> bool:
    """Record the pair as kept when ``users`` (its tensors read elsewhere) is not empty; True if kept."""
    if users:
        report.kept.append(f"{conv_name}+{bn_name}: Conv+BN kept, not fused: {', '.join(users)} "
                           "also used elsewhere in the model, which the fused weights would change")
        report.kept_pairs.append(KeptPair(conv_name, bn_name, tuple(users)))
    return bool(users)


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (cname, conv), (bname, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + cname, prefix + bname))
    return pairs


def _fused_pair(pair: nn.Module) -> nn.Module:
    """(conv, bn) -> (the fused conv, what the BN applies after normalising)."""
    conv, bn = list(pair.children())
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)  # the pairs _conv_bn_pairs found
    after = post_norm(bn)
    if after is None:
        raise ValueError(f"{type(bn).__name__} cannot be split at this precision")
    return nn.Sequential(fuse_conv_bn(conv, bn), after)


def _fuse_conv_bn_pairs(model: nn.Module, bench: Workbench, probe: torch.Tensor | None, report: FoldReport) -> None:
    pairs, refused = _conv_bn_pairs(model, report)
    inputs = capture_inputs(model, {c for c, _ in pairs}, probe)
    fused_bns: set[str] = set()
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)  # what _conv_bn_pairs found
        if post_norm(bn) is None:
            report.kept.append(f"{bn_name}: {type(bn).__name__} kept (its forward is not BatchNorm2d followed by "
                               "its child modules, so it cannot be split exactly)")
            refused.add(bn_name)
            continue
        folded = bench.fold_one(nn.Sequential(conv, bn), _fused_pair, inputs.get(conv_name), conv_name)
        fused, after = list(folded.module.children())
        model.set_submodule(conv_name, fused)
        model.set_submodule(bn_name, after)
        fused_bns.add(bn_name)
        tail = [n for n, _ in after.named_children()]
        kept = f", {', '.join(tail)} kept" if tail else ""
        report.rows.append(_row(conv_name, f"Conv2d+{type(bn).__name__} ({bn_name}{kept})", folded))
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and name not in fused_bns | refused:
            report.kept.append(f"{name}: {type(module).__name__} kept (its input is not a Conv2d output used only by it)")


def _fold_residuals(model: nn.Module, bench: Workbench, probe: torch.Tensor | None, report: FoldReport) -> None:
    """Pass 3b: every module ``x + conv(x)`` becomes one conv (``deploy.fold.residual``)."""
    names = residual_convs(model)
    inputs = capture_inputs(model, set(names), probe)
    for name in names:
        module = model.get_submodule(name)
        folded = bench.fold_one(module, absorb_identity, inputs.get(name), name)
        model.set_submodule(name, folded.module)
        report.rows.append(_row(name, f"{type(module).__name__} (x + conv(x))->Conv2d", folded))


def _add_rewrites(report: FoldReport, bench: Workbench, found: tuple[list[RewriteRow], list[str]]) -> None:
    rows, kept = found
    precision = FLOAT64 if bench.dtype == torch.float64 else FLOAT32  # rewrites run on the model as it runs
    report.rows.extend(FoldRow(r.name, "rewrite", r.max_abs_error, r.max_rel_error, r.detail, precision) for r in rows)
    report.kept.extend(kept)


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy to fold (the user's module is never changed), or a BadInputError naming what cannot be copied."""
    try:
        return copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - deepcopy of arbitrary user attributes raises TypeError, RuntimeError …
        raise BadInputError(f"the model cannot be copied ({type(exc).__name__}: {str(exc)[:200]}): convdeploy folds a "
                            "copy and never changes your module; drop the attribute that cannot be copied (a lock, a "
                            "file handle, a generator) or fold in place with `inplace`") from exc


@dataclass
class _Passes:
    """What fold_model was asked to do."""

    fuse_bn: bool
    rewrite: bool


def _run_passes(target: nn.Module, bench: Workbench, probe: torch.Tensor | None, passes: _Passes,
                report: FoldReport, before: list[torch.Tensor] | None) -> None:
    """The three passes (module docstring) in place on ``target``, and the whole model's error against its
    outputs on the probe (``before``)."""
    _fold_paper_convs(target, bench, probe, report)
    if passes.fuse_bn:
        _apply_conventions(target, bench, probe, report)
        if passes.rewrite:
            _add_rewrites(report, bench, absorb_batchnorms(target, probe))
        _fuse_conv_bn_pairs(target, bench, probe, report)
        _fold_residuals(target, bench, probe, report)
        if passes.rewrite:
            _add_rewrites(report, bench, rewrite_layers(target, probe))
    if before is not None and report.rows:
        report.end_to_end = outputs_error(before, probe_outputs(target, probe))


def _runs_in_float64(target: nn.Module, probe: torch.Tensor | None) -> tuple[str, list[torch.Tensor] | None]:
    """Cast ``target`` to float64: ("", its outputs on the probe), or why the float64 model fails on it."""
    target.to(torch.float64)
    try:
        return "", probe_outputs(target, probe)
    except Exception as exc:  # noqa: BLE001 - a forward that casts (x.float()) fails in float64 with many types
        return f"{type(exc).__name__}: {first_line(exc, 200)}", None


def _fold_layer_local(target: nn.Module, dtype: torch.dtype, device: torch.device, probe: torch.Tensor,
                      passes: _Passes, reason: str) -> FoldReport:
    """The fold with the model in its own dtype, each fold made and measured on float64 copies of its layer."""
    report = FoldReport(probe_shape=tuple(probe.shape[1:]), precision=LAYER_LOCAL,
                        precision_reason=f"the model does not run in float64 ({reason})")
    target.to(dtype)
    probe = probe.to(dtype)
    try:
        before = probe_outputs(target, probe)
    except Exception as exc:  # noqa: BLE001 - the user's forward may raise anything: name it
        raise BadInputError(f"the model does not run on a {'x'.join(map(str, probe.shape))} {dtype} input "
                            f"({type(exc).__name__}: {first_line(exc, 200)}): check `probe_shape`") from exc
    _run_passes(target, Workbench(dtype, device, layer_local=True), probe, passes, report, before)
    return report


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    param = next(model.parameters(), None)
    return (param.dtype, param.device) if param is not None else (torch.float32, torch.device("cpu"))


def fold_model(
    model: nn.Module,
    *,
    inplace: bool = False,
    fuse_bn: bool = True,
    rewrite: bool = True,
    probe_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    measure: bool = True,
    probe_batch: int = 2,
) -> tuple[nn.Module, FoldReport]:
    """Return the deploy form of ``model`` and a report with one row per folded layer.

    ``fuse_bn=False`` stops after pass 1: the deploy form as the papers count it
    (CoC/DO-Conv reduced to convolutions, every BatchNorm kept). ``rewrite`` (with
    ``fuse_bn``) adds the exact deploy rewrites of ``deploy.fold.rewrite`` (rows of kind
    ``rewrite``); ``rewrite=False`` gives the folded graph without them, to compare.
    ``probe_shape`` (C, H, W) defaults to ``model.input_shape``; without either, or with
    ``measure=False`` (counting params on a meta-device model, say), errors are NaN. The probe
    holds ``probe_batch`` samples (a program exported with a static batch takes only that one).
    """
    check_eval_mode(model, "the model")
    target = model if inplace else _copy(model)
    dtype, device = _model_dtype_device(target)
    probe = probe_input(target, probe_shape, seed, probe_batch) if measure else None
    probe = probe.to(device) if probe is not None else None
    passes = _Passes(fuse_bn, rewrite)
    failed, before = _runs_in_float64(target, probe)
    if probe is not None and failed and dtype != torch.float64:
        report = _fold_layer_local(target, dtype, device, probe, passes, failed)
    else:
        report = FoldReport(probe_shape=tuple(probe.shape[1:]) if probe is not None else None)
        try:
            _run_passes(target, Workbench(torch.float64, device), probe, passes, report, before)
        except Exception as exc:  # noqa: BLE001 - a replacement that casts fails in float64 with many types
            if probe is None or dtype == torch.float64:
                raise
            if inplace:
                raise BadInputError(f"a folded layer does not run in float64 ({first_line(exc, 200)}): fold a copy "
                                    "(without `inplace`), which is then folded layer by layer") from exc
            target = _copy(model)
            report = _fold_layer_local(target, dtype, device, probe, passes,
                                       f"once folded: {type(exc).__name__}: {first_line(exc, 200)}")
    target.to(dtype)
    target.eval()
    return target, report
