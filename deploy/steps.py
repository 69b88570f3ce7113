"""The steps of the export pipeline, one plain function each, shared by export and validate.

load -> fold -> export -> simplify -> graph checks -> parity -> write. Each step takes
typed inputs and returns its own result object; ``deploy.pipeline.run_export`` chains
them and ``deploy.validate.run_validate`` reuses load, fold and parity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from deploy.atomic import sha256_file, write_json_atomic
from deploy.checkpoint import LoadedModel, load_checkpoint
from deploy.digits import load_digits
from deploy.errors import BadInputError
from deploy.fold import FoldReport, fold_model
from deploy.metrics import Tolerance
from deploy.train import accuracy
from deploy.version import __version__
from exporters.onnx import GraphDiff, graph_diff, save_onnx
from validators.parity import ParityReport, check_parity, first_divergence, seeded_inputs
from validators.runtimes import OrtRuntime
from validators.torch_runtime import TorchRuntime


def resolve_input_shape(loaded: LoadedModel, input_size: int | None) -> tuple[int, int, int]:
    """(C, H, W) from ``input_size``, else the checkpoint, else an error that says what to give."""
    if input_size is not None and input_size < 1:
        raise BadInputError(f"`input_size` must be positive, got {input_size}")
    shape = loaded.input_shape
    if shape is None:
        first_conv = next((m for m in loaded.model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is None or input_size is None:
            raise BadInputError("the checkpoint does not record its input shape: give `input_size`")
        return (first_conv.in_channels, input_size, input_size)
    if input_size is not None:
        return (int(shape[0]), input_size, input_size)
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def probe_forward(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Run one batch-1 forward pass; a shape the model cannot take becomes a usable error."""
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    except (RuntimeError, ValueError) as exc:
        size = "x".join(str(s) for s in input_shape[1:])
        reason = str(exc).strip().splitlines()[0][:300]
        raise BadInputError(f"the model cannot take a {size} input ({reason}); choose another `input_size`") from exc


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
    return value


def tolerance_from(atol: float | None, rtol: float | None) -> Tolerance:
    """``atol``/``rtol`` -> Tolerance: pass when max abs error <= atol + rtol * max|ref|."""
    if (atol is not None and atol < 0) or (rtol is not None and rtol < 0):
        raise BadInputError("`atol` and `rtol` must be >= 0")
    default = Tolerance()
    return Tolerance(rtol=default.rtol if rtol is None else rtol, atol=default.atol if atol is None else atol)


def load_step(checkpoint: Path, *, arch: str | None, conv: str | None, conv_kwargs: dict[str, Any],
              trust_pickle: bool, input_size: int | None) -> tuple[LoadedModel, tuple[int, int, int]]:
    """Read the checkpoint and settle the input shape the model is exported and checked at."""
    loaded = load_checkpoint(checkpoint, arch=arch, conv=conv, conv_kwargs=conv_kwargs, trust_pickle=trust_pickle)
    input_shape = resolve_input_shape(loaded, input_size)
    probe_forward(loaded.model, input_shape)
    return loaded, input_shape


def fold_step(loaded: LoadedModel, input_shape: tuple[int, ...], seed: int,
              rewrite: bool = True) -> tuple[nn.Module, FoldReport]:
    """The deploy form of the loaded model and the per-layer fold report (float64 probe);
    ``rewrite`` adds the exact deploy rewrites (``deploy.rewrite``)."""
    return fold_model(loaded.model, probe_shape=input_shape, seed=seed, rewrite=rewrite)


def rewrite_comparison(loaded: LoadedModel, input_shape: tuple[int, ...], rewritten: onnx.ModelProto,
                       export: Callable[[nn.Module], onnx.ModelProto]) -> GraphDiff:
    """What the rewrites changed in the graph: the model folded without them, through the same
    ``export`` (export and simplify) as ``rewritten``, compared with it."""
    plain, _ = fold_model(loaded.model, probe_shape=input_shape, rewrite=False, measure=False)
    return graph_diff(export(plain), rewritten)


def onnx_metadata(loaded: LoadedModel, folded: bool) -> dict[str, str]:
    """The ``convdeploy.*`` metadata an export writes into the ONNX file."""
    return {
        "convdeploy.version": __version__,
        "convdeploy.arch": loaded.arch or "custom",
        "convdeploy.conv": loaded.conv or "custom",
        "convdeploy.conv_kwargs": ",".join(f"{k}={v}" for k, v in sorted(loaded.conv_kwargs.items())),
        "convdeploy.folded": "yes" if folded else "no",
        "convdeploy.source_sha256": loaded.sha256,
    }


def parity_batches(fixed_batch: int | None) -> tuple[int, ...]:
    """Batch 1 and a batch > 1, or the graph's own fixed batch."""
    return (fixed_batch,) if fixed_batch else (1, 3)


def parity_step(loaded: LoadedModel, folded: nn.Module | None, ort: OrtRuntime, proto: onnx.ModelProto,
                input_shape: tuple[int, ...], batches: tuple[int, ...], samples: int, seed: int, tol: Tolerance,
                fold_report: FoldReport | None) -> tuple[ParityReport, dict[str, Callable[[np.ndarray], Any]]]:
    """Training form vs (folded torch and) ONNX Runtime; on failure, the first diverging layer.

    Returns the report and the runtimes' ``run`` functions by role, for the accuracy step.
    """
    reference = TorchRuntime(loaded.model, name="training-form")
    folded_rt = TorchRuntime(folded, name="folded-torch") if folded is not None else None
    candidates = ([folded_rt] if folded_rt is not None else []) + [ort]
    parity = check_parity(reference, candidates, input_shape, samples, batches, seed, tol)
    if not parity.passed:
        folded_failed = folded_rt is not None and not parity.candidates[0].passed
        if folded_failed and fold_report is not None and fold_report.rows:
            worst = max(fold_report.rows, key=lambda r: r.max_rel_error)
            parity.first_divergence = f"{worst.name} ({worst.kind}, fold rel error {worst.max_rel_error:.3g})"
        else:
            x = seeded_inputs(input_shape, batches[:1], 1, seed)[0]
            parity.first_divergence = first_divergence(folded if folded is not None else loaded.model, proto, x, tol)
    runs: dict[str, Callable[[np.ndarray], Any]] = {"training_form": reference.run, "onnxruntime": ort.run}
    if folded_rt is not None:
        runs["folded"] = folded_rt.run
    return parity, runs


def held_out_accuracy(loaded: LoadedModel, runs: dict[str, Callable[[np.ndarray], Any]]) -> dict[str, Any] | None:
    """Accuracy of each runtime on the checkpoint's data set's test split, when it names one."""
    if loaded.meta.get("dataset") != "digits":
        return None
    _, test = load_digits(size=loaded.input_shape[-1] if loaded.input_shape else 32)
    result: dict[str, Any] = {"dataset": "digits", "split": "test", "images": int(len(test.y))}
    result.update({name: accuracy(run, test) for name, run in runs.items()})
    return result


def write_step(proto: onnx.ModelProto, output: Path, report_path: Path, report: Any) -> None:
    """Write the ONNX file, then its report (which records the file's sha256); both or neither."""
    try:
        save_onnx(proto, output)
        try:
            report.outputs = {"onnx": {"path": str(output), "sha256": sha256_file(output)}}
            write_json_atomic(report_path, report.to_dict())
        except BaseException:
            output.unlink(missing_ok=True)
            raise
    except OSError as exc:  # disk full, a directory that became read-only mid-run, ...
        raise BadInputError(f"cannot write {output} or {report_path} ({exc.strerror or exc}): "
                            "free some space or choose another output path") from exc
