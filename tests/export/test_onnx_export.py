"""exporters/onnx.py: both exporters, dynamic/fixed batch, metadata, atomic save, onnxsim."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch
from torch import nn

from deploy.core.errors import BadInputError
from deploy.core.metrics import Tolerance
from exporters.onnx import export_onnx, export_onnx_detailed, save_onnx
from exporters.simplify import op_histogram, simplify_checked, simplify_onnx
from tests.helpers import PORTABLE_IR
from validators.runtimes.onnxruntime import OrtRuntime

SHAPE = (3, 32, 32)


def small_cnn(seed: int = 0) -> nn.Module:
    """Conv/BN/ReLU/pool/Linear net with non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return small_cnn()


@pytest.fixture(scope="module")
def exports(net: nn.Module) -> dict:
    meta = {"conv": "plain", "folded": "yes"}
    return {name: export_onnx_detailed(net, SHAPE, exporter=name, metadata=meta) for name in ("dynamo", "torchscript")}


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name, opset", [("dynamo", 20), ("torchscript", 20)])
def test_interface_opset_and_metadata(exports: dict, name: str, opset: int) -> None:
    res = exports[name]
    proto = res.model
    assert res.exporter == name and res.opset == opset
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == opset
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    assert _dims(proto.graph.input[0]) == ["batch", 3, 32, 32]
    assert _dims(proto.graph.output[0]) == ["batch", 10]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["conv"] == "plain" and meta["folded"] == "yes" and meta["convdeploy.exporter"] == name
    # both exporters fold eval-mode BN into the convs: 2 Conv, no BatchNormalization
    hist = op_histogram(proto)
    assert hist["Conv"] == 2 and "BatchNormalization" not in hist and hist["Gemm"] == 1
    assert res.seconds > 0 and res.to_dict()["nodes"] == len(proto.graph.node)


def test_exporter_noise_is_captured_not_printed(net: nn.Module, capfd: pytest.CaptureFixture) -> None:
    res = export_onnx_detailed(net, SHAPE, exporter="torchscript")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert any("TorchScript" in w for w in res.captured_warnings)  # the legacy-exporter deprecation notice


@pytest.mark.parametrize("name", ["dynamo", "torchscript"])
def test_dynamic_batch_runs_at_1_and_7(exports: dict, net: nn.Module, name: str) -> None:
    rt = OrtRuntime(exports[name].model)
    rng = np.random.default_rng(1)
    for batch in (1, 7):
        x = rng.standard_normal((batch, *SHAPE)).astype(np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        out = rt.run(x)
        assert out.shape == (batch, 10)
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_fixed_batch(net: nn.Module) -> None:
    proto = export_onnx_detailed(net, SHAPE, exporter="torchscript", dynamic_batch=False, batch_size=2).model
    assert _dims(proto.graph.input[0]) == [2, 3, 32, 32]
    rt = OrtRuntime(proto)
    assert rt.run(np.zeros((2, *SHAPE), np.float32)).shape == (2, 10)
    with pytest.raises(Exception, match="(?i)invalid dimensions"):  # onnxruntime's own error type
        rt.run(np.zeros((3, *SHAPE), np.float32))


def test_export_writes_atomically(net: nn.Module, tmp_path) -> None:
    out = tmp_path / "m.onnx"
    proto = export_onnx(net, out, SHAPE, exporter="torchscript")
    assert onnx.load(str(out)) == proto
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # no temp files left behind
    with pytest.raises(BadInputError, match="does not exist"):
        export_onnx(net, tmp_path / "missing" / "m.onnx", SHAPE, exporter="torchscript")
    assert not (tmp_path / "missing").exists()


def test_save_external_data_above_threshold(exports: dict, tmp_path) -> None:
    proto = exports["torchscript"].model
    out = tmp_path / "big.onnx"
    save_onnx(proto, out, external_data_threshold=0)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    assert os.path.getsize(out) < os.path.getsize(tmp_path / "big.onnx.data")
    loaded = onnx.load(str(out))
    for a, b in zip(proto.graph.initializer, loaded.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    x = np.ones((1, *SHAPE), np.float32)
    np.testing.assert_allclose(OrtRuntime(out).run(x), OrtRuntime(proto).run(x), rtol=0, atol=0)


def test_bad_models_are_refused(net: nn.Module) -> None:
    with pytest.raises(BadInputError, match="training mode"):
        export_onnx(small_cnn().train(), None, SHAPE)
    with pytest.raises(BadInputError, match="cannot take input"):
        export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).eval(), None, (3, 16, 16))
    broken = small_cnn()
    broken[0].weight.data[0, 0, 0, 0] = float("nan")
    with pytest.raises(BadInputError, match="NaN or Inf"):
        export_onnx(broken, None, SHAPE)
    with pytest.raises(BadInputError, match="unknown exporter"):
        export_onnx(net, None, SHAPE, exporter="tflite")


def test_simplify_records_what_onnxsim_changed(net: nn.Module) -> None:
    # without the dynamo optimizer the graph keeps BN and the shape arithmetic; onnxsim folds them
    raw = export_onnx_detailed(net, SHAPE, exporter="dynamo", optimize=False, metadata={"conv": "plain"}).model
    before = op_histogram(raw)
    simp, res = simplify_onnx(raw, SHAPE)
    assert res.applied and res.reason is None
    assert res.ops_before == before and res.ops_after == op_histogram(simp)
    assert res.nodes_after < res.nodes_before
    # onnxsim folds the shape arithmetic and fuses the BN after the biased conv; the first conv's
    # zero bias is built from CastLike(input) in this unoptimized graph, so that BN stays
    assert before["BatchNormalization"] == 2 and res.op_changes["BatchNormalization"] == [2, 1]
    assert res.op_changes["Shape"] == [before["Shape"], 0]
    assert res.ops_after["Conv"] == 2 and res.max_abs_err is not None and res.max_rel_err <= 1e-5
    assert "onnxsim:" in res.summary()
    assert {p.key: p.value for p in simp.metadata_props}["conv"] == "plain"
    x = np.random.default_rng(3).standard_normal((5, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(OrtRuntime(simp).run(x) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_simplify_rejection_is_loud(exports: dict) -> None:
    proto = exports["torchscript"].model
    # an impossible tolerance: onnxsim's (correct) graph must be refused, with the reason
    kept, res = simplify_onnx(proto, SHAPE, tol=Tolerance(rtol=-1.0))
    assert kept is proto and not res.applied
    assert res.reason.startswith("onnxsim changed the outputs: max abs error")
    assert "NOT applied" in res.summary()


def test_simplify_failure_keeps_original() -> None:
    x = oh.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, 4, 4])
    y = oh.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", 3, 4, 4])
    nodes = [oh.make_node("Relu", ["input"], ["r"], name="relu0"),
             oh.make_node("Frobnicate", ["r"], ["output"], name="mystery", domain="my.custom")]
    proto = oh.make_model(oh.make_graph(nodes, "g", [x], [y]),
                          opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("my.custom", 1)], ir_version=PORTABLE_IR)
    kept, res = simplify_onnx(proto, (3, 4, 4))
    assert kept is proto and not res.applied and res.reason
    assert res.nodes_before == res.nodes_after == 2


def test_simplify_that_changes_nothing_keeps_the_checked_graph(exports: dict) -> None:
    """onnxsim returns a dynamo export node for node and weight for weight: the same outputs exactly, so
    the exported graph stays and no ONNX Runtime session runs (an impossible bound still goes the long way)."""
    proto = exports["dynamo"].model
    done = simplify_checked(proto, SHAPE)
    assert done.model is proto and done.session is None
    assert done.result.applied and done.result.max_abs_err == 0.0 and done.result.op_changes == {}
    kept, res = simplify_onnx(proto, SHAPE, tol=Tolerance(rtol=-1.0))
    assert kept is proto and not res.applied and res.reason.startswith("onnxsim changed the outputs")
