"""`deploy validate`: the parity step of the export alone, on an ONNX file made earlier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from deploy.atomic import sha256_file
from deploy.report import RunReport
from deploy.steps import fold_step, held_out_accuracy, load_step, parity_batches, parity_step, tolerance_from
from validators.runtimes import OrtRuntime


def run_validate(
    checkpoint: Path,
    onnx_path: Path,
    *,
    samples: int = 8,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    input_size: int | None = None,
    arch: str | None = None,
    conv: str | None = None,
    conv_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
) -> RunReport:
    """Training form vs folded vs ONNX Runtime on ``onnx_path``; the report says whether parity holds."""
    tol = tolerance_from(atol, rtol)
    loaded, input_shape = load_step(Path(checkpoint), arch=arch, conv=conv, conv_kwargs=dict(conv_kwargs or {}),
                                    trust_pickle=trust_pickle, input_size=input_size)
    ort = OrtRuntime(onnx_path, name="onnxruntime-cpu")
    dim0 = ort.session.get_inputs()[0].shape[0]
    folded, fold_report = fold_step(loaded, input_shape, seed)
    proto = onnx.load(str(onnx_path))
    parity, runs = parity_step(loaded, folded, ort, proto, input_shape,
                               parity_batches(dim0 if isinstance(dim0, int) else None), samples, seed, tol, fold_report)
    runs.pop("folded")
    return RunReport("convdeploy validate", {"path": str(checkpoint), **loaded.describe()}, parity, seed,
                     fold=fold_report, accuracy=held_out_accuracy(loaded, runs),
                     onnx={"path": str(onnx_path), "sha256": sha256_file(onnx_path)})
