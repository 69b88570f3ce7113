"""exporters/tensorrt/fp16_onnx.py: the fp16 graph TensorRT 11 builds `--fp16` engines from, checked on CPU.

ONNX Runtime's CPU provider runs fp16 graphs, so everything here is real: the converter
(onnxconverter-common), the fp16 kernels, the parity gate with near-ties excluded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deploy.core.errors import BackendUnavailableError, ParityError
from deploy.core.metrics import Tolerance, top1_margins
from exporters.tensorrt.fp16_onnx import FP32_GATES, check_fp16_onnx, convert_to_fp16, fp16_ops, fp32_ops, write_fp16_onnx
from tests.helpers import gated_cnn, spread_cnn
from validators.parity import check_parity
from validators.runtimes.onnxruntime import OrtRuntime
from validators.runtimes.pytorch import TorchRuntime

SHAPE = (3, 32, 32)


def export(model: torch.nn.Module, path: Path) -> Path:
    torch.onnx.export(model, torch.randn(1, *SHAPE), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(gated_cnn(), tmp_path_factory.mktemp("fp16") / "gated.onnx")


def test_conversion_keeps_io_and_gates_fp32(gated: Path) -> None:
    fp32 = onnx.load(str(gated))
    fp16 = convert_to_fp16(fp32)
    f32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in fp16.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in fp16.graph.output] == [f32]
    ops = fp16_ops(fp16)
    assert ops["Conv"] == "fp16" and ops["Gemm"] == "fp16" and ops["Relu"] == "fp16"
    assert ops["Sigmoid"] == "fp32" and ops["Softmax"] == "fp32"
    assert {"Sigmoid", "Softmax"} <= set(FP32_GATES) and set(FP32_GATES) <= set(fp32_ops())
    weights = [t for t in fp16.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert weights and sum(t.data_type == f32 for t in fp16.graph.initializer) < len(weights)
    assert fp32_ops() and fp16_ops(fp32)["Conv"] == "fp32"  # the input graph is untouched


def test_fp16_graph_agrees_within_the_fp16_bound(gated: Path) -> None:
    fp32, fp16 = onnx.load(str(gated)), convert_to_fp16(onnx.load(str(gated)))
    report = check_fp16_onnx(fp32, fp16, SHAPE, batches=(1, 8), samples=4)
    cand = report.candidates[0]
    assert report.passed, report.summary()
    assert 1e-5 < cand.max_rel_err <= 1e-2  # really fp16 (fp32 graphs agree to ~1e-7), and within its bound
    logits = cand.outputs[0]
    assert logits.top1_rows + logits.top1_excluded == 4 * (1 + 8) and logits.top1_rows >= 30
    assert cand.top1_agreement >= 0.99 and report.tolerance["name"] == "float16"
    # and the fp16 graph against the PyTorch model itself
    torch_ref = check_parity(TorchRuntime(gated_cnn()), [OrtRuntime(fp16)], SHAPE, 2, (1, 8), 0,
                             Tolerance.for_precision("fp16"))
    assert torch_ref.passed, torch_ref.summary()


def test_write_fp16_onnx_writes_only_a_checked_graph(gated: Path, tmp_path: Path) -> None:
    out = tmp_path / "gated.fp16.onnx"
    report = write_fp16_onnx(gated, out, SHAPE, batches=(1, 2), samples=2)
    assert report.passed and fp16_ops(onnx.load(str(out)))["Conv"] == "fp16"
    # activations beyond fp16's range (65504) overflow to inf: the gate refuses, nothing is written
    torch.manual_seed(0)
    big = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 32 * 32, 10))
    with torch.no_grad():
        big[0].weight.mul_(3e5)
    overflow = export(big.eval(), tmp_path / "overflow.onnx")
    with pytest.raises(ParityError, match="disagrees with the fp32 graph") as err:
        write_fp16_onnx(overflow, tmp_path / "overflow.fp16.onnx", SHAPE, samples=1)
    assert err.value.exit_code == 3 and not (tmp_path / "overflow.fp16.onnx").exists()


def test_near_ties_are_excluded_from_top1() -> None:
    ref = np.array([[5.0, 4.99, 0.0], [5.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    out = np.array([[4.98, 5.0, 0.0], [5.0, 1.0, 0.0], [0.0, 3.0, 1.0]])  # row 0 flips inside the bound
    assert np.allclose(top1_margins(ref), [0.01, 4.0, 2.0])
    rep = check_parity(_Fixed(ref), [_Fixed(out)], (3, 1, 1), samples=1, batches=(3,), tol=Tolerance.for_precision("fp16"))
    cand = rep.candidates[0]
    assert (cand.outputs[0].top1_rows, cand.top1_excluded, cand.top1_agreement) == (2, 1, 1.0) and rep.passed
    assert "1 near-ties excluded" in rep.summary()
    flipped = out.copy()
    flipped[1] = [0.0, 5.0, 0.0]  # a decisive row flips: counted and failed
    rep = check_parity(_Fixed(ref), [_Fixed(flipped)], (3, 1, 1), samples=1, batches=(3,),
                       tol=Tolerance.for_precision("fp16"))
    assert rep.candidates[0].top1_agreement == 0.5 and not rep.passed


class _Fixed:
    """A runtime that returns fixed logits whatever the input (the parity gate's arithmetic alone)."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits, self.name = logits, "fixed"

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"output": self.logits[: x.shape[0]]}


def test_spread_model_logits_are_far_apart() -> None:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((64, *SHAPE)).astype(np.float32))
    with torch.no_grad():
        logits = spread_cnn()(x).numpy()
    bound = Tolerance.for_precision("fp16").bound(float(np.abs(logits).max()))
    assert np.mean(top1_margins(logits) > bound) >= 0.95 and len(set(logits.argmax(1))) >= 5


def test_missing_converter_exits_5(monkeypatch: pytest.MonkeyPatch, gated: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)  # as if not installed
    with pytest.raises(BackendUnavailableError, match="onnxconverter-common") as err:
        convert_to_fp16(onnx.load(str(gated)))
    assert err.value.exit_code == 5
