"""`deploy validate`: the parity step of the export alone, on an ONNX file made earlier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from deploy.core.atomic import sha256_file, write_json_atomic
from deploy.core.errors import BadInputError
from deploy.core.limits import check_input_elements, check_samples, check_seed
from deploy.core.metrics import Tolerance
from deploy.core.pathguard import guard_paths
from deploy.core.shapes import second_size
from deploy.core.threads import ThreadPlan, plan_threads
from deploy.load.source import ModelSource
from deploy.pipeline.report import RunReport
from deploy.pipeline.shapes import check_second_size
from deploy.pipeline.steps import (
    fold_step,
    held_out_accuracy,
    load_step,
    parity_batches,
    parity_step,
    parity_threads,
    tolerance_from,
)
from validators.runtimes.onnxruntime import OrtRuntime
from validators.runtimes.pytorch import torch_threads


def run_validate(
    source: ModelSource | Path,
    onnx_path: Path,
    *,
    samples: int = 8,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    input_size: str | int | tuple[int, ...] | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    report: Path | None = None,
) -> RunReport:
    """Training form vs folded vs ONNX Runtime on ``onnx_path``, every output by name; the report
    says whether parity holds (written to ``report`` when given). A graph with symbolic H/W is
    checked at a second size too. ``source`` is a ``ModelSource`` (or a checkpoint path)."""
    source = source if isinstance(source, ModelSource) else ModelSource(Path(source))
    guard_paths(inputs={**source.input_paths(), "the ONNX model": onnx_path}, outputs={"`report`": report})
    check_seed(seed)
    check_samples(samples)
    tol = tolerance_from(atol, rtol)
    plan = plan_threads()
    with torch_threads(plan.free):
        result = _validate(source, onnx_path, samples, seed, tol, input_size, input_shape, plan)
    if report is not None:
        write_json_atomic(report, result.to_dict())
    return result


def _validate(source: ModelSource, onnx_path: Path, samples: int, seed: int, tol: Tolerance,
              input_size: str | int | tuple[int, ...] | None, input_shape: str | tuple[int, ...] | None,
              plan: ThreadPlan) -> RunReport:
    loaded, shape = load_step(source, input_size=input_size, input_shape=input_shape)
    ort = OrtRuntime(onnx_path, threads=parity_threads(plan, True)[0], name="onnxruntime-cpu")
    dims = ort.session.get_inputs()[0].shape
    _check_onnx_shape(onnx_path, dims, shape)
    batches = parity_batches(dims[0] if isinstance(dims[0], int) else None)
    check_input_elements((max(batches), *shape))
    dynamic_hw = len(dims) == 4 and not isinstance(dims[2], int) and not isinstance(dims[3], int)
    if dynamic_hw:
        check_second_size(loaded.model, shape)
    folded, fold_report = fold_step(loaded, shape, seed)
    proto = onnx.load(str(onnx_path))
    parity, runtimes = parity_step(loaded, folded, ort, proto, shape, batches, samples, seed, tol, fold_report,
                                   extra_sizes=[second_size(shape)] if dynamic_hw else [], plan=plan)
    runtimes.pop("folded")
    return RunReport("convdeploy validate", {"path": source.label, **loaded.describe()}, parity, seed,
                     fold=fold_report, accuracy=held_out_accuracy(loaded, runtimes, plan=plan),
                     onnx={"path": str(onnx_path), "sha256": sha256_file(onnx_path)}, threads=plan)


def _check_onnx_shape(onnx_path: Path, dims: list[Any], shape: tuple[int, int, int]) -> None:
    """The ONNX input's fixed C/H/W must be the shape the model is checked at (exit 2, not a crash)."""
    if len(dims) != 4:
        raise BadInputError(f"{onnx_path} takes a {len(dims)}-D input: expected an NCHW image model")
    fixed = [(axis, d, s) for axis, d, s in zip("CHW", dims[1:], shape) if isinstance(d, int) and d != s]
    if fixed:
        got = "x".join(str(d) if isinstance(d, int) else "?" for d in dims[1:])
        raise BadInputError(f"{onnx_path} was exported for {got} inputs, but the model is checked at "
                            f"{'x'.join(map(str, shape))}: give `input_size`/`input_shape` matching the ONNX model")
