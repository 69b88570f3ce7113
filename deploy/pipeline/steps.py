"""The steps of the export pipeline, one plain function each, shared by export and validate.

load -> fold -> export -> simplify -> graph checks -> parity -> write. Each step takes
typed inputs and returns its own result object; ``deploy.pipeline.export.run_export`` chains
them and ``deploy.pipeline.validate.run_validate`` reuses load, fold and parity.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
import torch.fx
from torch import nn

from deploy.core.atomic import Transaction, json_bytes, output_lock
from deploy.core.errors import BadInputError
from deploy.core.limits import MAX_INPUT_ELEMENTS, MAX_SIDE, check_finite, check_input_elements, check_input_size
from deploy.core.metrics import Tolerance
from deploy.core.outputs import flatten_outputs
from deploy.fold.fold import FoldReport, fold_model
from deploy.load.checkpoint import LoadedModel, load_checkpoint, loaded_from_module
from deploy.models.digits import load_digits
from deploy.models.train import accuracy
from deploy.version import __version__
from exporters.onnx import GraphDiff, graph_diff, stage_onnx
from validators.parity import ParityReport, check_parity, first_divergence, seeded_inputs
from validators.runtimes.onnxruntime import OrtRuntime
from validators.runtimes.pytorch import TorchRuntime


def _positive_ints(text: str, count: tuple[int, ...], name: str, example: str) -> tuple[int, ...]:
    parts = text.lower().replace(" ", "").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in count or min(values, default=0) < 1:
        raise BadInputError(f"`{name}` must be {example} with positive sizes, got {text!r}")
    return values


def parse_input_size(value: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """``"64"`` / ``64`` -> (64, 64); ``"64x48"`` / ``(64, 48)`` -> (64, 48) (height x width)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadInputError(f"`input_size` must be H or HxW with positive sizes, got {value!r}")
    if isinstance(value, int):
        values: tuple[int, ...] = _positive_ints(str(value), (1,), "input_size", "H or HxW")
    elif isinstance(value, str):
        values = _positive_ints(value, (1, 2), "input_size", "H or HxW")
    else:
        values = _positive_ints("x".join(str(v) for v in value), (1, 2), "input_size", "H or HxW")
    check_input_size("input_size", values)
    return (values[0], values[-1])


def parse_input_shape(value: str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """``"3x64x48"`` / ``(3, 64, 48)`` -> (C, H, W)."""
    if value is None:
        return None
    if not isinstance(value, (str, Sequence)) or isinstance(value, bytes):
        raise BadInputError(f"`input_shape` must be CxHxW text or a (C, H, W) sequence, got {type(value).__name__}")
    text = value if isinstance(value, str) else "x".join(str(v) for v in value)
    c, h, w = _positive_ints(text, (3,), "input_shape", "CxHxW")
    check_input_size("input_shape", (h, w))
    check_input_elements((c, h, w), "input_shape")
    return (c, h, w)


def resolve_input_shape(loaded: LoadedModel, input_size: str | int | Sequence[int] | None = None,
                        input_shape: str | Sequence[int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) from ``input_shape``, else ``input_size`` (H or HxW) with the model's channels,
    else the checkpoint's; an error that says what to give when none of them is known."""
    if input_size is not None and input_shape is not None:
        raise BadInputError("give `input_size` (H or HxW) or `input_shape` (CxHxW), not both")
    full = parse_input_shape(input_shape)
    if full is not None:
        return full
    size = parse_input_size(input_size)
    shape = loaded.input_shape
    if shape is None:
        channels = input_channels(loaded)
        if channels is None:
            raise BadInputError("the model does not record its input shape and its input channels cannot be told "
                                "from it: give `input_shape` (CxHxW)")
        if size is None:
            raise BadInputError(f"the model does not record its input shape: give `input_size` (H or HxW; it takes "
                                f"{channels} channels) or `input_shape` (CxHxW)")
        return (channels, *size)
    if size is not None:
        return (int(shape[0]), *size)
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def input_channels(loaded: LoadedModel) -> int | None:
    """The channels the model's input has: an ExportedProgram's static dim, else the first ``nn.Conv2d``
    the forward pass calls (torch.fx), else the first one registered; None when there is none."""
    dims = loaded.program_dims
    if dims is not None and len(dims) == 4 and dims[1] is not None:
        return int(dims[1])
    convs = {name: m for name, m in loaded.model.named_modules() if isinstance(m, nn.Conv2d)}
    try:
        graph = torch.fx.symbolic_trace(loaded.model).graph
        called = [str(n.target) for n in graph.nodes if n.op == "call_module" and str(n.target) in convs]
    except Exception:  # noqa: BLE001 - fx raises many types on untraceable code; registration order is the fallback
        called = []
    first = convs[called[0]] if called else next(iter(convs.values()), None)
    return int(first.in_channels) if first is not None else None


def parse_dynamic(dynamic: str | None, batch: str) -> tuple[int | None, bool]:
    """(fixed batch size or None for a dynamic batch axis, whether H/W are dynamic).

    ``dynamic`` is ``batch`` (the default), ``hw``, ``batch,hw`` or ``none``; ``batch`` is
    ``dynamic`` or a fixed size. A fixed ``batch`` with the default ``dynamic`` fixes the
    batch axis; a ``dynamic`` without ``batch`` fixes it at 1.
    """
    parts = {p.strip() for p in (dynamic or "batch").lower().split(",") if p.strip()}
    if not parts or not parts <= {"batch", "hw", "none"} or ("none" in parts and len(parts) > 1):
        raise BadInputError(f"`dynamic` must be batch, hw, batch,hw or none, got {dynamic!r}")
    fixed = parse_batch(batch)
    if fixed is not None and "batch" in parts:
        if dynamic is not None:
            raise BadInputError(f"`batch` {fixed} fixes the batch axis, but `dynamic` {dynamic} makes it dynamic: "
                                "give one of them")
        parts.discard("batch")
    if "batch" not in parts and fixed is None:
        fixed = 1
    return fixed, "hw" in parts


def program_axes(loaded: LoadedModel, batch: str, dynamic: str | None) -> tuple[int | None, bool]:
    """``parse_dynamic``, reconciled with the dims an ExportedProgram was exported with: its graph
    runs only at a static batch N (which becomes the default) and cannot make static H/W dynamic."""
    fixed, dynamic_hw = parse_dynamic(dynamic, batch)
    dims = loaded.program_dims
    if dims is None or len(dims) != 4:
        return fixed, dynamic_hw
    if dims[0] is not None:
        asked_dynamic = dynamic is not None and "batch" in dynamic.lower()
        if asked_dynamic or (batch != "dynamic" and fixed != dims[0]):
            raise BadInputError(f"the ExportedProgram was exported with a static batch of {dims[0]}: export it with "
                                f"`batch` {dims[0]}, or re-export it with a dynamic batch dim (torch.export.Dim)")
        fixed = dims[0]
    if dynamic_hw and None not in dims[2:]:
        raise BadInputError("the ExportedProgram was exported with a static H and W: drop `dynamic` hw, or "
                            "re-export it with dynamic height/width dims (torch.export.Dim)")
    return fixed, dynamic_hw


def second_size(input_shape: Sequence[int]) -> tuple[int, int]:
    """The other spatial size parity checks a graph with dynamic H/W at: twice H and W, which
    keeps every divisibility a network needs (strides, pooling windows)."""
    return (2 * int(input_shape[1]), 2 * int(input_shape[2]))


def check_second_size(model: nn.Module, input_shape: Sequence[int], batch: int = 1) -> None:
    """Parity of a graph with dynamic H/W also runs at ``second_size``: it must fit the limits, and the
    model must run there (a Flatten+Linear head fixes H and W)."""
    h, w = second_size(input_shape)
    if max(h, w) > MAX_SIDE or batch * int(input_shape[0]) * h * w > MAX_INPUT_ELEMENTS:
        raise BadInputError(f"with dynamic H/W, parity also runs at twice the input size ({h}x{w}), above what "
                            f"convdeploy runs ({MAX_SIDE} pixels a side, {MAX_INPUT_ELEMENTS:,} elements): choose a "
                            "smaller `input_size` or drop hw from `dynamic`")
    try:
        probe_forward(model, (int(input_shape[0]), h, w))
    except BadInputError as exc:
        cause = exc.__cause__ or exc
        reason = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else type(cause).__name__
        raise BadInputError(f"with dynamic H/W, parity also runs at {h}x{w}, where the model fails ({reason}): its "
                            "height and width are not dynamic (a Flatten+Linear head fixes them); drop hw from "
                            "`dynamic`") from exc


def _required_inputs(model: nn.Module) -> list[str]:
    """The forward arguments without a default (an ExportedProgram's module takes ``*args``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _probe_failure(what: str, input_shape: Sequence[int], exc: BaseException) -> str:
    """Why a forward pass failed, in the words that lead to the fix: channels, dtype, or the size."""
    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    channels = re.search(r"to have (\d+) channels", reason)
    if channels:
        return (f"{what} takes {channels.group(1)} input channels, not {input_shape[0]} ({reason}): give `input_shape` "
                f"with {channels.group(1)} channels")
    if re.search(r"scalar type|dtype|Long|Half|BFloat16|Double", reason):
        return (f"{what} does not run on a float32 image tensor ({reason}): convdeploy exports models of one float32 "
                "NCHW input; convert the model with model.float() or wrap what it needs")
    size = "x".join(str(s) for s in input_shape[1:])
    return f"{what} cannot take a {size} input ({reason}); choose another `input_size`"


def probe_forward(model: nn.Module, input_shape: Sequence[int], batch: int = 1, *, what: str = "the model") -> None:
    """Run one forward pass on a float32 zero input; what the model cannot take becomes a usable error
    (an ExportedProgram's guards raise AssertionError), and so does an output without elements."""
    size = "x".join(str(s) for s in input_shape)
    required = _required_inputs(model)
    if len(required) > 1:
        raise BadInputError(f"{what}'s forward takes {len(required)} inputs ({', '.join(required)}): convdeploy exports "
                            "models of one image tensor; wrap the model in a module whose forward takes one")
    try:
        with torch.no_grad():
            out = model(torch.zeros((batch, *input_shape)))
    except MemoryError as exc:
        raise BadInputError(f"not enough memory to run {what} on a {size} input: choose a smaller `input_size`"
                            ) from exc
    except (RuntimeError, ValueError, AssertionError, TypeError, IndexError) as exc:
        raise BadInputError(_probe_failure(what, input_shape, exc)) from exc
    empty = [name for name, t in flatten_outputs(out, lambda v: isinstance(v, torch.Tensor)) if t.numel() == 0]
    if empty:
        raise BadInputError(f"{what}'s output {empty[0]!r} has no elements at a {size} input: choose a larger "
                            "`input_size`")


def parse_batch(batch: str) -> int | None:
    """None for a dynamic batch axis, else the fixed batch size."""
    if batch == "dynamic":
        return None
    try:
        value = int(batch)
    except ValueError:
        raise BadInputError(f"`batch` must be 'dynamic' or a positive integer, got {batch!r}") from None
    if value < 1:
        raise BadInputError(f"`batch` must be 'dynamic' or a positive integer, got {batch!r}")
    check_input_elements((value,))
    return value


def tolerance_from(atol: float | None, rtol: float | None) -> Tolerance:
    """``atol``/``rtol`` -> Tolerance: pass when max abs error <= atol + rtol * max|ref|."""
    check_finite("atol", atol)
    check_finite("rtol", rtol)
    default = Tolerance()
    return Tolerance(rtol=default.rtol if rtol is None else rtol, atol=default.atol if atol is None else atol)


def load_step(checkpoint: Path | None, *, arch: str | None, conv: str | None, conv_kwargs: dict[str, Any],
              trust_pickle: bool, input_size: str | int | Sequence[int] | None,
              input_shape: str | Sequence[int] | None = None, model_class: str | None = None,
              model_args: Any = None, module: nn.Module | None = None) -> tuple[LoadedModel, tuple[int, int, int]]:
    """Read the checkpoint (or take the in-memory ``module``) and settle the input shape the
    model is exported and checked at."""
    if module is not None:
        loaded = loaded_from_module(module)
    elif checkpoint is None:
        raise BadInputError("give a checkpoint file or a module to export")
    else:
        loaded = load_checkpoint(checkpoint, arch=arch, conv=conv, conv_kwargs=conv_kwargs, trust_pickle=trust_pickle,
                                 model_class=model_class, model_args=model_args)
    shape = resolve_input_shape(loaded, input_size, input_shape)
    static_batch = loaded.program_dims[0] if loaded.program_dims else None
    probe_forward(loaded.model, shape, static_batch or 1)
    return loaded, shape


def fold_step(loaded: LoadedModel, input_shape: tuple[int, ...], seed: int,
              rewrite: bool = True) -> tuple[nn.Module, FoldReport]:
    """The deploy form of the loaded model and the per-layer fold report (float64 probe);
    ``rewrite`` adds the exact deploy rewrites (``deploy.fold.rewrite``)."""
    static_batch = loaded.program_dims[0] if loaded.program_dims else None
    return fold_model(loaded.model, probe_shape=input_shape, seed=seed, rewrite=rewrite, probe_batch=static_batch or 2)


def rewrite_comparison(loaded: LoadedModel, input_shape: tuple[int, ...], rewritten: onnx.ModelProto,
                       export: Callable[[nn.Module], onnx.ModelProto]) -> GraphDiff:
    """What the rewrites changed in the graph: the model folded without them, through the same
    ``export`` (export and simplify) as ``rewritten``, compared with it."""
    plain, _ = fold_model(loaded.model, probe_shape=input_shape, rewrite=False, measure=False)
    return graph_diff(export(plain), rewritten)


def onnx_metadata(loaded: LoadedModel, folded: bool, input_shape: Sequence[int],
                  fold_report: FoldReport | None = None, rewrite: bool = True) -> dict[str, str]:
    """The ``convdeploy.*`` metadata an export writes into the ONNX file (and nothing else: the
    simplifier's own keys are dropped). ``convdeploy.rewrites``: how many exact deploy rewrites
    the fold applied, ``off`` without ``rewrite``, ``none`` without a fold."""
    rewrites = (str(len(fold_report.rewrites)) if rewrite else "off") if folded and fold_report else "none"
    return {
        "convdeploy.version": __version__,
        "convdeploy.arch": loaded.arch or "custom",
        "convdeploy.conv": loaded.conv or "custom",
        "convdeploy.conv_kwargs": ",".join(f"{k}={v}" for k, v in sorted(loaded.conv_kwargs.items())),
        "convdeploy.folded": "yes" if folded else "no",
        "convdeploy.rewrites": rewrites,
        "convdeploy.source_sha256": loaded.sha256,
        "convdeploy.input_shape": "x".join(str(int(s)) for s in input_shape),
    }


def parity_batches(fixed_batch: int | None) -> tuple[int, ...]:
    """Batch 1 and a batch > 1, or the graph's own fixed batch."""
    return (fixed_batch,) if fixed_batch else (1, 3)


def parity_step(loaded: LoadedModel, folded: nn.Module | None, ort: OrtRuntime, proto: onnx.ModelProto,
                input_shape: tuple[int, ...], batches: tuple[int, ...], samples: int, seed: int, tol: Tolerance,
                fold_report: FoldReport | None, extra_sizes: Sequence[tuple[int, int]] = (),
                ) -> tuple[ParityReport, dict[str, Callable[[np.ndarray], Any]]]:
    """Training form vs (folded torch and) ONNX Runtime, every output by name, at ``input_shape``
    and any ``extra_sizes``; on failure, the first diverging layer.

    Returns the report and the runtimes' ``run`` functions by role, for the accuracy step.
    """
    reference = TorchRuntime(loaded.model, name="training-form")
    folded_rt = TorchRuntime(folded, name="folded-torch") if folded is not None else None
    candidates = ([folded_rt] if folded_rt is not None else []) + [ort]
    parity = check_parity(reference, candidates, input_shape, samples, batches, seed, tol, extra_sizes=extra_sizes)
    if not parity.passed:
        parity.first_divergence = _first_divergence(parity, loaded, folded, proto, input_shape, batches, seed, tol,
                                                    fold_report, extra_sizes)
    runs: dict[str, Callable[[np.ndarray], Any]] = {"training_form": reference.run, "onnxruntime": ort.run}
    if folded_rt is not None:
        runs["folded"] = folded_rt.run
    return parity, runs


def _first_divergence(parity: ParityReport, loaded: LoadedModel, folded: nn.Module | None, proto: onnx.ModelProto,
                      input_shape: tuple[int, ...], batches: tuple[int, ...], seed: int, tol: Tolerance,
                      fold_report: FoldReport | None, extra_sizes: Sequence[tuple[int, int]]) -> str | None:
    """The worst fold when the folded torch model already differs, else the first module whose
    ONNX tensor differs (at the export size, then at the other sizes)."""
    folded_failed = folded is not None and not parity.candidates[0].passed
    if folded_failed and fold_report is not None and fold_report.rows:
        worst = max(fold_report.rows, key=lambda r: r.max_rel_error)
        whole = fold_report.end_to_end
        if whole is not None and not whole[1] <= max(10 * worst.max_rel_error, 1e-9):
            return (f"the folded model as a whole (float64 rel error {whole[1]:.3g}, while each fold is exact on its "
                    f"own input, worst {worst.max_rel_error:.3g}: the model reads folded weights elsewhere)")
        return f"{worst.name} ({worst.kind}, fold rel error {worst.max_rel_error:.3g})"
    model = folded if folded is not None else loaded.model
    for shape in [tuple(input_shape)] + [(input_shape[0], h, w) for h, w in extra_sizes]:
        try:
            found = first_divergence(model, proto, seeded_inputs(shape, batches[:1], 1, seed)[0], tol)
        except Exception:  # noqa: BLE001 - the graph may not even run at this size; the parity reasons say so
            found = None
        if found is not None:
            return found if shape == tuple(input_shape) else f"{found} (at {'x'.join(map(str, shape))})"
    return None


def held_out_accuracy(loaded: LoadedModel, runs: dict[str, Callable[[np.ndarray], Any]]) -> dict[str, Any] | None:
    """Accuracy of each runtime on the checkpoint's data set's test split, when it names one."""
    if loaded.meta.get("dataset") != "digits":
        return None
    _, test = load_digits(size=loaded.input_shape[-1] if loaded.input_shape else 32)
    result: dict[str, Any] = {"dataset": "digits", "split": "test", "images": int(len(test.y))}
    result.update({name: accuracy(run, test) for name, run in runs.items()})
    return result


def written_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset the file declares (what a report records, read back from the graph)."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def write_step(proto: onnx.ModelProto, output: Path, report_path: Path, report: Any) -> None:
    """Write the ONNX file and its report, both or neither (docs/architecture.md "Writes").

    Under the output's lock (a second writer of the same output waits), both go to
    temporary files first; the report records the sha256 of the ONNX bytes written; then
    the ONNX file and the report are renamed into place with SIGINT/SIGTERM held. An
    existing pair stays whole until the new pair is on disk.
    """
    with output_lock(output), Transaction() as txn:
        onnx_sha = stage_onnx(txn, proto, output)
        report.outputs = {"onnx": {"path": str(output), "sha256": onnx_sha}}
        txn.stage_bytes(report_path, json_bytes(report.to_dict()))
        txn.commit()
