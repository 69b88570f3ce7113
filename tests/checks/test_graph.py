"""validators/graph.py: verdicts, TensorRT matrix, dynamic conv weights, params/MACs from ONNX."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch
from torch import nn

from deploy.core.errors import GraphCheckError
from deploy.layers.conv_bn import fuse_conv_bn
from exporters.onnx import export_onnx
from exporters.simplify import simplify_onnx
from tests.helpers import PORTABLE_IR
from validators.graph import check_graph, compare_reports
from validators.macs import graph_macs
from validators.tensorrt_ops import load_tensorrt_ops

SHAPE = (3, 32, 32)


class EinsumWeightConv(nn.Module):
    """A conv whose kernel is computed at run time as D @ W (torch.einsum), like an unfolded DO-Conv."""

    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__()
        # cin*k*k = 99: W has 9801 elements, above the dynamo optimizer's 8192-element
        # constant-folding limit, so the einsum survives export
        self.W = nn.Parameter(torch.randn(cin * k * k, cin * k * k) * 0.05)
        self.D = nn.Parameter(torch.randn(cout, cin * k * k) * 0.05)
        self.shape = (cout, cin, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.einsum("oi,ij->oj", self.D, self.W).reshape(self.shape)
        return nn.functional.conv2d(x, w, padding=1)


def plain_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


def bn_net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    net[1].running_mean.uniform_(-0.3, 0.3)
    net[1].bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def torch_counts(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """Trainable params and Conv2d/Linear MACs at batch 1, by forward hooks."""
    macs = 0

    def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            macs += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            macs += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return sum(p.numel() for p in model.parameters() if p.requires_grad), macs


@pytest.fixture(scope="module")
def plain_exports() -> dict[str, onnx.ModelProto]:
    net = plain_net()
    return {e: export_onnx(net, None, SHAPE, exporter=e) for e in ("dynamo", "torchscript")}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_standard_model_is_clean_and_counts_match_torch(plain_exports: dict, exporter: str) -> None:
    rep = check_graph(plain_exports[exporter])
    assert rep.verdict == "ok" and rep.ok and rep.reasons == []
    assert rep.custom_domain_nodes == [] and rep.unsupported_ops == [] and rep.dynamic_conv_weights == []
    params, macs = torch_counts(plain_net(), SHAPE)
    # by hand: conv1 8*32*32*3*9 = 221184; conv2 (groups 2) 16*16*16*4*9 = 147456; fc 16*10 = 160
    assert macs == 221184 + 147456 + 160
    assert (rep.params, rep.macs) == (params, macs) == (3 * 8 * 9 + 8 + 16 * 4 * 9 + 16 + 160 + 10, macs)
    assert rep.macs_by_op == {"Conv": 221184 + 147456, "Gemm": 160}
    assert rep.op_histogram["Conv"] == 2 and rep.op_histogram["Relu"] == 2
    assert rep.tensorrt["version"] == "10.15" and "MaxPool" in rep.trt_restrictions
    d = rep.to_dict()
    assert d["verdict"] == "ok" and d["params"] == params
    rep.raise_if_failed()  # no exception


def test_params_rule_for_batchnorm_kept_and_fused() -> None:
    net = bn_net()
    params, macs = torch_counts(net, SHAPE)
    # dynamo without its optimizer keeps BatchNormalization: running mean/var are not params
    raw = export_onnx(net, None, SHAPE, exporter="dynamo", optimize=False)
    assert "BatchNormalization" in check_graph(raw).op_histogram
    assert check_graph(raw).params == params == 3 * 8 * 9 + 2 * 8 + 8 * 4 + 4
    # exported with BN fused, the graph has exactly the params of the torch Conv+BN fold
    fused = copy.deepcopy(net)
    fused[0], fused[1] = fuse_conv_bn(net[0], net[1]), nn.Identity()
    rep = check_graph(export_onnx(net, None, SHAPE, exporter="torchscript"))
    assert "BatchNormalization" not in rep.op_histogram
    assert (rep.params, rep.macs) == torch_counts(fused, SHAPE) == (params - 8, macs)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_einsum_weight_module_is_flagged_with_node_names(exporter: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(EinsumWeightConv(11, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    proto = export_onnx(net, None, (11, 16, 16), exporter=exporter)
    rep = check_graph(proto)
    assert rep.verdict == "failed"
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    einsum = next(n for n in proto.graph.node if n.op_type == "Einsum")
    assert [(d["node"], d["input"]) for d in rep.dynamic_conv_weights] == [(conv.name, "weight")]
    assert rep.dynamic_conv_weights[0]["computed_by"].startswith("Reshape node")
    assert rep.einsum_nodes == [einsum.name]
    text = " ".join(rep.reasons)
    assert "dynamic conv weights" in text and conv.name in text and einsum.name in text
    with pytest.raises(GraphCheckError) as info:
        rep.raise_if_failed()
    assert info.value.exit_code == 4 and conv.name in str(info.value)
    # onnxsim constant-folds the weight subgraph: the simplified graph is a plain conv
    simp, res = simplify_onnx(proto, (11, 16, 16))
    assert res.applied and res.op_changes["Einsum"] == [1, 0]
    assert check_graph(simp).ok and check_graph(simp).params == 8 * 11 * 9


def _model(nodes: list, inits: list = (), domains: tuple = ()) -> onnx.ModelProto:
    x = oh.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = oh.make_tensor_value_info("output", onnx.TensorProto.FLOAT, None)
    opsets = [oh.make_opsetid("", 18)] + [oh.make_opsetid(d, 1) for d in domains]
    return oh.make_model(oh.make_graph(nodes, "g", [x], [y], initializer=list(inits)),
                         opset_imports=opsets, ir_version=PORTABLE_IR)


def test_custom_domains_and_trt_unsupported_ops_are_named() -> None:
    proto = _model([
        oh.make_node("Relu", ["input"], ["a"], name="relu0"),
        oh.make_node("FusedGemm", ["a"], ["b"], name="ms_node", domain="com.microsoft"),
        oh.make_node("ATen", ["b"], ["c"], name="aten_node", domain="org.pytorch.aten"),
        oh.make_node("Unique", ["c"], ["output"], name="uniq"),
    ], domains=("com.microsoft", "org.pytorch.aten"))
    rep = check_graph(proto)
    assert rep.verdict == "failed"
    assert [(c["name"], c["domain"]) for c in rep.custom_domain_nodes] == [
        ("ms_node", "com.microsoft"), ("aten_node", "org.pytorch.aten")]
    assert rep.unsupported_ops == [{"op": "Unique", "nodes": ["uniq"], "why": "marked unsupported"}]
    assert rep.op_histogram == {"Relu": 1, "com.microsoft::FusedGemm": 1, "org.pytorch.aten::ATen": 1, "Unique": 1}
    assert any("ms_node" in r and "aten_node" in r for r in rep.reasons)


def test_conv_weight_behind_identity_or_constant_is_static() -> None:
    w = onnx.numpy_helper.from_array(torch.ones(4, 3, 3, 3).numpy(), "w")
    const_b = oh.make_node("Constant", [], ["b"], name="bconst",
                           value=onnx.numpy_helper.from_array(torch.zeros(4).numpy(), "bv"))
    proto = _model([const_b, oh.make_node("Identity", ["w"], ["w_alias"], name="alias"),
                    oh.make_node("Conv", ["input", "w_alias", "b"], ["output"], name="conv", pads=[1, 1, 1, 1])], [w])
    rep = check_graph(proto)
    assert rep.ok and rep.params == 4 * 27 + 4 and rep.macs == 4 * 8 * 8 * 27
    # the same conv with its weight computed by Mul at run time is flagged
    two = onnx.numpy_helper.from_array(torch.full((1,), 2.0).numpy(), "two")
    proto2 = _model([oh.make_node("Mul", ["w", "two"], ["w2"], name="scale"),
                     oh.make_node("Conv", ["input", "w2"], ["output"], name="conv")], [w, two])
    rep2 = check_graph(proto2)
    assert rep2.dynamic_conv_weights == [{"node": "conv", "input": "weight", "tensor": "w2",
                                          "computed_by": "Mul node scale"}]
    assert graph_macs(proto2)[0] == 4 * 6 * 6 * 27


def test_compare_reports_twins_and_differences(plain_exports: dict) -> None:
    a = check_graph(plain_exports["torchscript"])
    twin = check_graph(export_onnx(plain_net(seed=5), None, SHAPE, exporter="torchscript"))  # other weights
    assert compare_reports(a, twin) == []
    wider = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    diffs = compare_reports(a, check_graph(export_onnx(wider, None, SHAPE, exporter="torchscript")))
    assert len(diffs) == 2 and diffs[0].startswith("params differ") and diffs[1].startswith("MACs differ")


def test_packaged_tensorrt_table() -> None:
    table = load_tensorrt_ops()
    assert table.tensorrt_version == "10.15" and (table.opset_min, table.opset_max) == (9, 24)
    assert len(table.ops) == 200 and table.lookup("Gelu").supported and table.lookup("HannWindow").supported
    assert table.lookup("Conv").supported and not table.lookup("Unique").supported
    assert "dilations" in table.lookup("MaxPool").restrictions
    assert table.lookup("NotAnOp") is None


def _runtime_shaped_conv() -> onnx.ModelProto:
    """x [1, 3, 8, 8] reshaped to a width computed from x's values (8 at run time on a zero input: shape
    inference cannot know it), then a 4x3x3x3 conv: its MACs need the shape fallback."""
    from onnx import TensorProto, numpy_helper

    inits = [numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w"),
             numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
             numpy_helper.from_array(np.array([8], np.int64), "eight"),
             numpy_helper.from_array(np.array([1, 3, 8], np.int64), "head")]
    nodes = [oh.make_node("Mul", ["x", "zero"], ["z"]), oh.make_node("ReduceMax", ["z"], ["m"], keepdims=0),
             oh.make_node("Cast", ["m"], ["mi"], to=TensorProto.INT64),
             oh.make_node("Unsqueeze", ["mi", "axis0"], ["mu"]), oh.make_node("Add", ["mu", "eight"], ["width"]),
             oh.make_node("Concat", ["head", "width"], ["shape"], axis=0),
             oh.make_node("Reshape", ["x", "shape"], ["r"]), oh.make_node("Conv", ["r", "w"], ["y"], name="conv")]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=PORTABLE_IR)


def test_shape_fallback_runs_only_within_its_budget() -> None:
    """Where shape inference cannot tell, one ONNX Runtime run fills the shapes in — only when every known
    tensor fits the budget; with no budget (`deploy inspect`) the graph is never run."""
    model = _runtime_shaped_conv()
    assert graph_macs(model)[0] == 4 * 6 * 6 * 27  # run: the conv's output is 1x4x6x6
    for budget in (None, 100):  # 100 < 192 elements of x
        with pytest.raises(GraphCheckError, match="cannot infer the shapes around Conv node conv"):
            graph_macs(model, run_budget=budget)
    report = check_graph(model, run_budget=None)
    assert report.macs is None and report.verdict == "failed"
