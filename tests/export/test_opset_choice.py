"""exporters/opset.py: the export opset chosen by its targets (GELU as one Gelu node at opset 20 where the
TensorRT parser table and ONNX Runtime take it), `opset` as the override, the choice and reason in the report."""

from __future__ import annotations

import collections

import onnx
import pytest
import torch
from torch import nn

import deploy
from exporters.onnx import export_onnx_detailed
from exporters.opset import DEFAULT_OPSET, choose_opset, onnxruntime_takes
from validators.tensorrt_ops import load_tensorrt_ops

SHAPE = (3, 16, 12)


def gelu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 1), nn.GELU(approximate="tanh"),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def _ops(proto: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_gelu_exports_as_one_node_at_the_chosen_opset(exporter) -> None:
    choice = choose_opset(exporter)
    assert choice.opset == 20 and "TensorRT 10.15" in choice.reason and "ONNX Runtime" in choice.reason
    result = export_onnx_detailed(gelu_net(), SHAPE, exporter=exporter)
    ops = _ops(result.model)
    assert result.opset == 20 and result.opset_reason == choice.reason
    assert ops["Gelu"] == 2 and not {"Erf", "Tanh", "Div", "Pow"} & set(ops), ops  # both approximations


def test_opset_stays_the_override_and_18_decomposes_gelu() -> None:
    result = export_onnx_detailed(gelu_net(), SHAPE, opset=18)
    assert result.opset == 18 and result.opset_reason == "asked for (`opset`)"
    ops = _ops(result.model)
    assert "Gelu" not in ops and ops["Erf"] == 1 and ops["Tanh"] == 1


def test_targets_that_refuse_the_opset_keep_the_exporters_default(monkeypatch) -> None:
    import exporters.opset as opset_module

    monkeypatch.setattr(opset_module, "PREFERRED_OPSET", 24)  # in the TensorRT table's range, past both exporters'
    for exporter, written in (("dynamo", "18..23"), ("torchscript", "9..20")):
        choice = choose_opset(exporter)
        assert choice.opset == DEFAULT_OPSET[exporter] and f"the {exporter} exporter (writes {written})" in choice.reason
    monkeypatch.setattr(opset_module, "PREFERRED_OPSET", 20)
    monkeypatch.setattr(opset_module, "PREFERRED_OP", "NotAnOp")  # neither TensorRT's table nor ONNX Runtime has it
    choice = choose_opset("dynamo")
    assert choice.opset == 18 and "no NotAnOp" in choice.reason and "cannot load NotAnOp-20" in choice.reason


def test_onnxruntime_takes_real_operators_only() -> None:
    assert onnxruntime_takes("Gelu", 20) and not onnxruntime_takes("Gelu", 18)  # Gelu is new in opset 20
    table = load_tensorrt_ops()
    assert table.opset_min <= 20 <= table.opset_max and table.lookup("Gelu").supported


def test_the_report_records_the_choice_and_why(tmp_path) -> None:
    result = deploy.export(gelu_net(), input_shape=SHAPE, output=tmp_path / "m.onnx", samples=1)
    assert result.parity.passed
    assert result.record["options"]["opset"] == 20 and "Gelu" in result.record["options"]["opset_reason"]
    assert result.record["export"]["opset_reason"] == result.record["options"]["opset_reason"]
    assert result.graph.op_histogram.get("Gelu") == 2 and result.graph.reasons == []
