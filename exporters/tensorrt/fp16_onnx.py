"""fp32 ONNX -> fp16 ONNX for strongly typed TensorRT, checked on ONNX Runtime before any build.

TensorRT 11 builds strongly typed networks only: a layer runs in the precision its ONNX
tensors have, and the builder's fp16 switch of TensorRT 10 is gone. An fp16 engine is
therefore built from an fp16 graph, made here with onnxconverter-common's
``float16.convert_float_to_float16`` (the converter ONNX Runtime documents for mixed
precision): graph inputs and outputs stay float32 (``keep_io_types``), and so do the ops
of ``FP32_OPS`` — the converter's own block list plus the saturating gates (Sigmoid,
Softmax, ...) whose inputs are exponentiated, where fp16's range and rounding hurt most.
Casts are inserted around every op kept in float32.

``check_fp16_onnx`` runs both graphs on ONNX Runtime CPU (it has fp16 kernels) on seeded
inputs and judges them with ``Tolerance.for_precision("fp16")``: the fp16 graph is
handed to TensorRT only when it already agrees with the fp32 one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnx

from deploy.core.errors import BackendUnavailableError, BadInputError, ParityError
from deploy.core.metrics import Tolerance
from exporters.onnx import save_onnx
from validators.parity import ParityReport, check_parity
from validators.runtimes.onnxruntime import OrtRuntime

#: ops that stay float32 on top of the converter's default block list: exponentials and
#: the gates built on them (SCConv's sigmoid, SPConv's softmax), and reductions of squares
FP32_GATES = ("Sigmoid", "HardSigmoid", "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSumExp")
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def _float16_module():
    try:
        from onnxconverter_common import float16  # noqa: PLC0415 - optional (the trt extra): only fp16 engines need it
    except ImportError:
        raise BackendUnavailableError("onnxconverter-common is not installed: pip install 'onnxconverter-common>=1.14' "
                                      "(part of the trt extra) to build fp16 engines") from None
    return float16


def fp32_ops() -> tuple[str, ...]:
    """Every op type the conversion keeps in float32: the converter's default list plus ``FP32_GATES``."""
    return tuple(sorted(set(_float16_module().DEFAULT_OP_BLOCK_LIST) | set(FP32_GATES)))


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp16 copy of ``model`` with float32 inputs/outputs and ``fp32_ops()`` kept in float32."""
    if not any(i.type.tensor_type.elem_type == FLOAT for i in model.graph.input):
        raise BadInputError("the ONNX model has no float32 input: fp16 conversion starts from an fp32 export")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    converted = _float16_module().convert_float_to_float16(copy, keep_io_types=True, op_block_list=list(fp32_ops()))
    onnx.checker.check_model(converted)
    return converted


def fp16_ops(model: onnx.ModelProto) -> dict[str, str]:
    """Op type -> "fp16" / "fp32" / "mixed": the precision each op type computes in (from tensor types)."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.value_info,
                                                            *model.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    seen: dict[str, set[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Cast":
            continue
        kinds = {types.get(n) for n in node.input if n} - {None}
        label = "fp16" if kinds == {FLOAT16} else ("fp32" if FLOAT16 not in kinds else "mixed")
        seen.setdefault(node.op_type, set()).add(label)
    return {op: labels.pop() if len(labels) == 1 else "mixed" for op, labels in seen.items()}


def check_fp16_onnx(fp32: onnx.ModelProto | Path, fp16: onnx.ModelProto | Path, input_shape: Sequence[int],
                    batches: Sequence[int] = (1, 2), samples: int = 4, seed: int = 0) -> ParityReport:
    """Parity of the fp16 graph against the fp32 one on ONNX Runtime CPU, fp16 tolerance."""
    reference = OrtRuntime(fp32, name="onnxruntime-fp32")
    candidate = OrtRuntime(fp16, name="onnxruntime-fp16")
    return check_parity(reference, [candidate], input_shape, samples, batches, seed, Tolerance.for_precision("fp16"))


def write_fp16_onnx(src: Path, dst: Path, input_shape: Sequence[int], batches: Sequence[int] = (1, 2),
                    samples: int = 4, seed: int = 0) -> ParityReport:
    """Convert ``src``, check it (ParityError, exit 3, when it disagrees) and write it to ``dst``."""
    fp32 = onnx.load(str(src))
    fp16 = convert_to_fp16(fp32)
    report = check_fp16_onnx(fp32, fp16, input_shape, batches, samples, seed)
    if not report.passed:
        raise ParityError(f"the fp16 conversion of {src.name} disagrees with the fp32 graph on ONNX Runtime "
                          f"({'; '.join(report.candidates[0].reasons)}): build without `fp16`")
    save_onnx(fp16, dst)
    return report
