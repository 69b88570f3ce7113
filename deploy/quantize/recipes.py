"""The two INT8 flavours and the calibration methods, as ``onnxruntime.quantization`` options.

``tensorrt``: what TensorRT's explicit quantization takes — symmetric int8 activations and
per-channel int8 weights, every zero point 0, Q/DQ on the inputs of the weighted ops (Conv,
ConvTranspose, Gemm, MatMul) and none on their outputs, float biases (TensorRT's parser refuses an
int32 bias behind a DequantizeLinear). ``Add`` is not quantized on purpose: ONNX Runtime points
every consumer of a block's input at its one DequantizeLinear, so a residual Add sees Q/DQ on its
identity input only, the placement TensorRT fuses (Conv + bias + ReLU + Add in one kernel).

``cpu``: what ONNX Runtime's CPU kernels run fastest — unsigned (asymmetric) int8 activations and
per-channel int8 weights over ONNX Runtime's default operator list, which its graph optimizer
turns into QLinearConv/QLinearAdd/QGemm. Measured on this machine (docs/int8.md) it is the only
flavour faster than fp32 on ONNX Runtime; TensorRT refuses its uint8 Q/DQ.

Calibration: ``minmax`` (the observed range), ``entropy`` (KL divergence over 2048-bin
histograms) and ``percentile`` (99.999th percentile of |x|), each ONNX Runtime's calibrator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from onnxruntime.quantization import CalibrationMethod, QuantType

from deploy.core.errors import BadInputError

Target = Literal["tensorrt", "cpu"]
TARGETS: tuple[Target, ...] = ("tensorrt", "cpu")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
#: options of ONNX Runtime's calibrators that quantize_static does not pass on
CALIBRATOR_OPTIONS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


@dataclass(frozen=True)
class QuantRecipe:
    """The ``quantize_static`` arguments of one target."""

    target: Target
    activation_type: QuantType
    op_types: tuple[str, ...] | None  # None: ONNX Runtime's default list
    extra_options: dict[str, Any] = field(default_factory=dict)

    @property
    def symmetric(self) -> bool:
        return self.activation_type == QuantType.QInt8


def recipe_for(target: str) -> QuantRecipe:
    """The recipe of ``target`` (module docstring)."""
    if target == "tensorrt":
        return QuantRecipe("tensorrt", QuantType.QInt8, WEIGHTED_OPS, {
            "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
            "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS)})
    if target == "cpu":
        return QuantRecipe("cpu", QuantType.QUInt8, None, {})
    raise BadInputError(f"`target` must be {' or '.join(TARGETS)}, got {target!r}")


def method_of(name: str) -> CalibrationMethod:
    """The calibration method called ``name``."""
    if name not in METHODS:
        raise BadInputError(f"`method` must be {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]
