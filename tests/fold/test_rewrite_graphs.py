"""The rewritten exports of the zoo's SPConv, IC and SCNet models: what their ONNX graphs hold.

`deploy export` (rewrites on by default) of SPConv-ResNet-50, IC-ResNet-50 and SCNet-50 at
small inputs: parity through ONNX Runtime passes, and the graph has no BatchNormalization,
no Softmax, no Shape, and no channel Split/Slice of a convolution's output that could have
been computed as separate convolutions. The report says what the rewrites changed.
SCNet-50 at 112x112 has SCConv maps of 28 (Up() an integer upsampling), 14 (rows gathered)
and 7 and 4 (a broadcast).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import torch

from deploy.fold.fold import fold_model
from deploy.load.source import ModelSource
from deploy.models.random_init import randomize_model
from deploy.models.zoo import build_model
from deploy.pipeline.export import run_export
from deploy.pipeline.options import ExportOptions
from exporters.onnx import export_onnx_detailed
from exporters.simplify import op_histogram
from tests.helpers import PORTABLE_IR

_UNARY = ("Relu", "Identity", "Sigmoid", "Clip", "LeakyRelu")


def _axis_one(node: onnx.NodeProto, consts: dict[str, list[int]]) -> bool:
    if node.op_type == "Split":
        return next((a.i for a in node.attribute if a.name == "axis"), 0) == 1
    axes = consts.get(node.input[3]) if len(node.input) > 3 else None
    return axes == [1]


def splittable_slices(proto: onnx.ModelProto) -> list[str]:
    """Channel Split/Slice nodes whose input is a group-1 Conv's output (through unary ops) that
    nothing but channel slices reads: that Conv could have been separate convolutions."""
    g = proto.graph
    consts = {t.name: list(onnx.numpy_helper.to_array(t).ravel()) for t in g.initializer if t.data_type == 7}
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    found = []
    for node in g.node:
        if node.op_type not in ("Split", "Slice") or not _axis_one(node, consts):
            continue
        name = node.input[0]
        while name in producer and producer[name].op_type in _UNARY and len(users[name]) == 1:
            name = producer[name].input[0]
        src = producer.get(name)
        if src is None or src.op_type != "Conv" or next((a.i for a in src.attribute if a.name == "group"), 1) != 1:
            continue
        if all(u.op_type in ("Split", "Slice") or u.op_type in _UNARY for u in users[name]):
            found.append(node.name)
    return found


def test_the_slice_check_sees_a_splittable_producer():
    """The check is not vacuous: Conv -> Relu -> Slice(channels) is flagged, Slice of the input is not."""
    w = onnx.numpy_helper.from_array(np.ones((8, 3, 1, 1), "float32"), "w")
    ints = {n: onnx.numpy_helper.from_array(np.array(v, "int64"), n)
            for n, v in (("s", [0]), ("e", [4]), ("ax", [1]))}
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv"), oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("Slice", ["r", "s", "e", "ax"], ["y"], name="cut"),
             oh.make_node("Slice", ["x", "s", "e", "ax"], ["z"], name="cut_input")]
    vi = lambda n, c: oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, c, 4, 4])  # noqa: E731
    model = oh.make_model(oh.make_graph(nodes, "g", [vi("x", 3)], [vi("y", 4), vi("z", 3)], [w, *ints.values()]),
                          ir_version=PORTABLE_IR)
    assert splittable_slices(model) == ["cut"]


def _export(zoo_checkpoint, tmp_path, arch: str, conv: str, size: int):
    """The export pipeline (`deploy export`'s ``run_export``, parity included) without the
    comparison export; the CLI case below has it."""
    ckpt = zoo_checkpoint(arch, conv, size)
    opts = ExportOptions(source=ModelSource(ckpt), output=tmp_path / f"{arch}_{conv}.onnx", samples=2,
                         compare_rewrites=False)
    outcome = run_export(opts)
    return outcome.report.to_dict(), onnx.load(str(outcome.onnx_path))


def _check_graph(rep: dict, proto: onnx.ModelProto, conv: str) -> dict[str, int]:
    assert all(c["passed"] for c in rep["parity"]["candidates"])  # training form vs folded torch vs ONNX Runtime
    hist = op_histogram(proto)
    assert not {"BatchNormalization", "Softmax", "Shape", "Sub"} & set(hist), hist
    assert hist.get("ReduceMean", 0) <= 1  # the classifier head's mean only: the gates pool with AveragePool
    assert "Gather" not in hist or conv == "sc"
    assert splittable_slices(proto) == []
    rows = [r for r in rep["fold"]["rows"] if r["kind"] == "rewrite"]
    assert len(rows) >= 16 and max(r["max_rel_error"] for r in rows) < 1e-12
    assert rep["options"]["rewrite"] is True
    return hist


def test_rewritten_spconv_resnet50_cli(zoo_checkpoint, deploy_cli, tmp_path):
    """`deploy export` end to end, with the summary line and the comparison with the graph the
    same model has without the rewrites (the default)."""
    out = tmp_path / "sp50.onnx"
    run = deploy_cli("export", zoo_checkpoint("resnet50", "sp", 32), "-o", out, "--samples", 2)
    assert run.exit_code == 0, run.stderr
    report = json.loads((tmp_path / "sp50.report.json").read_text())
    hist = _check_graph(report, onnx.load(str(out)), "sp")
    assert "Slice" not in hist and hist["AveragePool"] >= 16 and hist["Resize"] == 16
    changes = report["rewrites"]["op_changes"]
    assert all(changes[op][0] >= 16 and changes[op][1] == 0 for op in ("BatchNormalization", "Softmax", "Slice"))
    assert "rewrites:" in run.stdout and "BatchNormalization -16" in run.stdout.replace("\n", " ")
    assert "rewrite diff" in run.stdout  # the step of the second export


def test_rewritten_ic_resnet50(zoo_checkpoint, tmp_path):
    rep, proto = _export(zoo_checkpoint, tmp_path, "resnet50", "ic", 32)
    hist = _check_graph(rep, proto, "ic")
    assert hist["AveragePool"] == 16  # the window sums


def test_rewritten_scnet50(zoo_checkpoint, tmp_path):
    rep, proto = _export(zoo_checkpoint, tmp_path, "scnet50", "sc", 112)
    hist = _check_graph(rep, proto, "sc")
    assert hist["Concat"] == 16  # the bottlenecks' own; the 16 size computations are gone
    assert hist["Resize"] == 4 and hist["Gather"] == 2 * 4  # 28x28 maps upsample, 14x14 gather, 7 and 4 broadcast


def test_slices_remain_where_the_producer_is_not_a_conv():
    """ResNet-20's SPConv reads the block input (also the residual) or another SPConv's output:
    its channel slices stay, and the check does not flag them."""
    torch.manual_seed(0)
    model = randomize_model(build_model("resnet20", "sp"), (3, 16, 16), batch=2).eval()
    folded, _ = fold_model(model, probe_shape=(3, 16, 16))
    proto = export_onnx_detailed(folded, (3, 16, 16)).model
    assert op_histogram(proto)["Slice"] > 0 and splittable_slices(proto) == []


def test_no_rewrite_keeps_the_folded_graph(zoo_checkpoint, deploy_cli, tmp_path):
    ckpt = zoo_checkpoint("resnet20", "ic", 32)
    run = deploy_cli("export", ckpt, "--no-rewrite", "-o", tmp_path / "m.onnx", "--samples", 2)
    assert run.exit_code == 0, run.stderr
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["options"]["rewrite"] is False and report["rewrites"] is None
    assert not [r for r in report["fold"]["rows"] if r["kind"] == "rewrite"]
    hist = report["graph"]["op_histogram"]
    assert hist["BatchNormalization"] == 18 and hist["Sub"] == 18  # the BN after each IC layer stays
    assert "rewrites:" not in run.stdout and "0 rewritten" in run.stdout
