"""`deploy validate`: step 6 of the export alone, on an ONNX file made earlier."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from deploy.atomic import sha256_file
from deploy.checkpoint import load_checkpoint
from deploy.environment import device_description, versions
from deploy.fold import fold_model
from deploy.pipeline import (
    explain_parity_failure,
    held_out_accuracy,
    probe_forward,
    resolve_input_shape,
    tolerance_from,
)


def run_validate(
    checkpoint: Path,
    onnx_path: Path,
    *,
    samples: int = 8,
    seed: int = 0,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    input_size: Optional[int] = None,
    arch: Optional[str] = None,
    conv: Optional[str] = None,
    conv_kwargs: Optional[dict[str, Any]] = None,
    trust_pickle: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Step 6 of the export alone: training form vs folded vs ONNX Runtime; returns (report, parity)."""
    import onnx

    from validators.parity import check_parity
    from validators.runtimes import OrtRuntime, TorchRuntime

    tol = tolerance_from(atol, rtol)
    loaded = load_checkpoint(checkpoint, arch=arch, conv=conv, conv_kwargs=conv_kwargs, trust_pickle=trust_pickle)
    input_shape = resolve_input_shape(loaded, input_size)
    probe_forward(loaded.model, input_shape)
    ort = OrtRuntime(onnx_path, name="onnxruntime-cpu")
    dim0 = ort.session.get_inputs()[0].shape[0]
    batches = (dim0,) if isinstance(dim0, int) else (1, 3)
    folded, fold_report = fold_model(loaded.model, probe_shape=input_shape, seed=seed)
    reference = TorchRuntime(loaded.model, name="training-form")
    parity = check_parity(reference, [TorchRuntime(folded, name="folded-torch"), ort], input_shape, samples, batches, seed, tol)
    if not parity.passed:
        explain_parity_failure(parity, fold_report, folded, onnx.load(str(onnx_path)), input_shape, tol, seed)
    report = {
        "tool": "convdeploy validate",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        "device": device_description(),
        "input": {"path": str(checkpoint), **loaded.describe()},
        "onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path)},
        "seeds": {"parity": seed, "fold_probe": seed},
        "tolerance": parity.tolerance,
        "fold": fold_report.to_dict(),
        "parity": parity.to_dict(),
        "accuracy": held_out_accuracy(loaded, {"training_form": reference.run, "onnxruntime": ort.run}),
    }
    return report, parity
