"""The opset an export writes: chosen by its targets, or the one asked for (docs/export-and-parity.md).

Each exporter writes a range of opsets (``OPSET_RANGE``). Without an ``opset`` the export takes
``PREFERRED_OPSET`` — the newest opset that gives an operator these CNNs use its own ONNX node
(GELU: ``Gelu``, new in opset 20, instead of Div/Erf/Add/Mul) — when every target the export is
checked for takes it: the exporter writes it, the packaged TensorRT parser table
(``validators.tensorrt_ops``) has it in its opset range and supports ``Gelu``, and this machine's
ONNX Runtime loads a ``Gelu`` node at that opset. Otherwise it takes the exporter's own default
(``DEFAULT_OPSET``), and the choice says which target refused. Opset 20 is also the newest every
TensorRT 10 parser reads (TensorRT 10.0 stops at 20); nothing a CNN exports gains from 21 and up.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx
import onnxruntime as ort

from deploy.core.errors import BadInputError
from validators.runtimes.onnxruntime import quiet_session_options
from validators.tensorrt_ops import load_tensorrt_ops

DEFAULT_OPSET = {"dynamo": 18, "torchscript": 17}
#: the opsets each exporter writes as asked (also checked on the written graph): the dynamo
#: exporter writes 18 instead when its version converter cannot go below 18 (a ResNet's
#: Squeeze/Unsqueeze) and silently above its newest; TorchScript stops at 20 and fails on
#: today's CNNs (BatchNorm, pooling) below 9
OPSET_RANGE = {"dynamo": (18, 23), "torchscript": (9, 20)}
#: the newest opset that gives an operator CNN exports use its own node, and that operator
PREFERRED_OPSET, PREFERRED_OP = 20, "Gelu"


@dataclass(frozen=True)
class OpsetChoice:
    """The opset an export writes and why (the report's ``opset_reason``)."""

    opset: int
    reason: str


def check_exporter(exporter: object) -> None:
    """BadInputError unless ``exporter`` names one of the exporters (``DEFAULT_OPSET``)."""
    if exporter not in DEFAULT_OPSET:
        raise BadInputError(f"`exporter` must be {' or '.join(DEFAULT_OPSET)} (unknown exporter {exporter!r})")


def check_opset(exporter: str, opset: int | None) -> int:
    """The opset to export with: the one ``choose_opset`` picks, or ``opset`` when the exporter writes it."""
    return choose_opset(exporter, opset).opset


def choose_opset(exporter: str, opset: int | None = None) -> OpsetChoice:
    """``opset`` when given (and the exporter writes it), else the target-chosen opset (module docstring)."""
    check_exporter(exporter)
    if opset is not None:
        low, high = OPSET_RANGE[exporter]
        if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
            raise BadInputError(f"`opset` {opset!r} is not one the {exporter} exporter writes: choose {low}..{high}"
                                f" (or the `exporter` {'torchscript' if exporter == 'dynamo' else 'dynamo'})")
        return OpsetChoice(opset, "asked for (`opset`)")
    refused = _refusals(exporter, PREFERRED_OPSET, PREFERRED_OP)
    if refused:
        return OpsetChoice(DEFAULT_OPSET[exporter], f"the {exporter} exporter's default: opset {PREFERRED_OPSET} "
                                                    f"({PREFERRED_OP} as one node) is refused by {'; '.join(refused)}")
    table = load_tensorrt_ops()
    return OpsetChoice(PREFERRED_OPSET, f"opset {PREFERRED_OPSET} writes GELU as one {PREFERRED_OP} node: the {exporter} "
                                        f"exporter writes it, TensorRT {table.tensorrt_version}'s ONNX parser takes "
                                        f"opsets {table.opset_min}-{table.opset_max} and {PREFERRED_OP}, ONNX Runtime "
                                        f"{ort.__version__} loads {PREFERRED_OP}-{PREFERRED_OPSET}")


def _refusals(exporter: str, opset: int, op: str) -> list[str]:
    """Which targets do not take ``op`` at ``opset`` (empty: all do)."""
    refused = []
    low, high = OPSET_RANGE[exporter]
    if not low <= opset <= high:
        refused.append(f"the {exporter} exporter (writes {low}..{high})")
    table = load_tensorrt_ops()
    row = table.lookup(op)
    if not table.opset_min <= opset <= table.opset_max or row is None or not row.supported:
        refused.append(f"TensorRT {table.tensorrt_version}'s ONNX parser (opsets {table.opset_min}-{table.opset_max}"
                       f"{'' if row is not None and row.supported else f', no {op}'})")
    if not onnxruntime_takes(op, opset):
        refused.append(f"ONNX Runtime {ort.__version__} (cannot load {op}-{opset})")
    return refused


@functools.lru_cache(maxsize=None)
def onnxruntime_takes(op: str, opset: int) -> bool:
    """Whether this ONNX Runtime loads a one-node float32 graph of ``op`` at ``opset``."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node(op, ["x"], ["y"])], "probe", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=9)
    try:
        ort.InferenceSession(model.SerializeToString(), quiet_session_options(), providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - onnxruntime raises its own types (Fail, InvalidGraph, NotImplemented)
        return False
    return True
