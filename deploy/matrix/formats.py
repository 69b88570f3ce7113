"""The formats `deploy matrix` can put a model in, and whether this machine can run each.

One ``FormatSpec`` per row: PyTorch eager (the training form, the reference every other row is
held to, and folded), ONNX Runtime fp32 and INT8, and on a CUDA GPU PyTorch fp32/fp16/bf16 and
TensorRT fp32/fp16/INT8. ``availability`` says why a row cannot run here ("unavailable: no GPU")
before any work; the INT8 rows need calibration images (they are made by `deploy quantize`'s
calibration and Q/DQ without its gate, ``deploy.matrix.rows``: the matrix gates every row itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from deploy.core.errors import BackendUnavailableError, BadInputError
from deploy.core.metrics import Tolerance
from exporters.tensorrt.build import require_engine_builder
from validators.runtimes.pytorch import require_cuda

#: quantize(fp32 ONNX, calibration data spec, output path) -> the INT8 (QDQ) ONNX written there


@dataclass(frozen=True)
class FormatSpec:
    """One row of the matrix: where the model runs and in which precision."""

    key: str
    title: str
    runtime: str  # torch | onnx | engine
    device: str = "cpu"  # cpu | cuda
    precision: str = "fp32"  # fp32 | fp16 | bf16 | int8
    fold: bool = True  # PyTorch rows: the deploy form (False: the training form)

    @property
    def reference(self) -> bool:
        """The training form on PyTorch: what every row's parity, accuracy and speed are held to."""
        return self.key == REFERENCE

    def tolerance(self) -> Optional[Tolerance]:
        """The parity tolerance that gates this row (None: parity is reported, accuracy gates it)."""
        if self.precision == "fp32":
            return Tolerance.for_precision("fp32")
        if self.precision == "fp16":
            return Tolerance.for_precision("fp16")
        return None


REFERENCE = "torch"
FORMATS: tuple[FormatSpec, ...] = (
    FormatSpec(REFERENCE, "PyTorch eager (training form)", "torch", fold=False),
    FormatSpec("torch-folded", "PyTorch eager (folded)", "torch"),
    FormatSpec("onnx", "ONNX Runtime fp32", "onnx"),
    FormatSpec("onnx-int8", "ONNX Runtime INT8", "onnx", precision="int8"),
    FormatSpec("torch-cuda-fp32", "PyTorch CUDA fp32 (folded)", "torch", "cuda"),
    FormatSpec("torch-cuda-fp16", "PyTorch CUDA fp16 (folded)", "torch", "cuda", "fp16"),
    FormatSpec("torch-cuda-bf16", "PyTorch CUDA bf16 (folded)", "torch", "cuda", "bf16"),
    FormatSpec("trt-fp32", "TensorRT fp32", "engine", "cuda"),
    FormatSpec("trt-fp16", "TensorRT fp16", "engine", "cuda", "fp16"),
    FormatSpec("trt-int8", "TensorRT INT8", "engine", "cuda", "int8"),
)
BY_KEY = {f.key: f for f in FORMATS}


def select_formats(names: Optional[list[str]]) -> list[FormatSpec]:
    """The rows ``names`` picks (keys, comma-separated, repeatable; default all), in table order; the
    training form always, as every other row is held to it."""
    wanted = {n.strip().lower() for item in (names or []) for n in item.split(",") if n.strip()}
    if not wanted or "all" in wanted:
        return list(FORMATS)
    unknown = sorted(wanted - BY_KEY.keys())
    if unknown:
        raise BadInputError(f"`formats`: unknown {', '.join(unknown)}; choose from {', '.join(BY_KEY)}")
    return [f for f in FORMATS if f.key in wanted or f.reference]


def availability(spec: FormatSpec, calib: Optional[str]) -> Optional[str]:
    """Why ``spec`` cannot run on this machine (None: it can), checked before any work."""
    try:
        if spec.device == "cuda":
            require_cuda()
        if spec.runtime == "engine":
            require_engine_builder(spec.precision == "fp16")
    except BackendUnavailableError as exc:
        reason = str(exc).split("; ")[0]
        return "no GPU" if spec.device == "cuda" and "GPU" in reason else reason
    if spec.precision == "int8" and calib is None:
        return "needs calibration images: give `calib`"
    return None
