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
import pytest

from exporters.onnx import op_histogram

CASES = [("resnet50", "sp", 32), ("resnet50", "ic", 32), ("scnet50", "sc", 112)]
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
    model = oh.make_model(oh.make_graph(nodes, "g", [vi("x", 3)], [vi("y", 4), vi("z", 3)], [w, *ints.values()]))
    assert splittable_slices(model) == ["cut"]


@pytest.mark.parametrize("arch,conv,size", CASES, ids=[f"{a}-{c}" for a, c, _ in CASES])
def test_rewritten_export_graph(folded_export, arch, conv, size):
    exp = folded_export(arch, conv, size)
    assert exp.run.exit_code == 0, exp.run.stderr
    rep = exp.report
    assert all(c["passed"] for c in rep["parity"]["candidates"])  # training form vs folded torch vs ONNX Runtime
    proto = onnx.load(str(exp.onnx_path))
    hist = op_histogram(proto)
    assert not {"BatchNormalization", "Softmax", "Shape", "Sub"} & set(hist), hist
    assert hist["ReduceMean"] == 1  # the classifier head's global mean only: the gates pool with AveragePool
    assert "Gather" not in hist or conv == "sc"
    assert splittable_slices(proto) == []
    rows = [r for r in rep["fold"]["rows"] if r["kind"] == "rewrite"]
    assert len(rows) >= 16 and max(r["max_rel_error"] for r in rows) < 1e-12
    assert rep["options"]["rewrite"] is True and "rewrites:" in exp.run.stdout
    changes = rep["rewrites"]["op_changes"]  # the same model exported without the rewrites, compared
    removed = {"sp": ("BatchNormalization", "Softmax", "Slice"), "ic": ("BatchNormalization", "Sub"),
               "sc": ("Shape", "Concat")}[conv]
    assert all(changes[op][0] >= 16 and changes[op][1] == 0 for op in removed), changes
    if conv == "sc":
        assert hist["Resize"] == 4 and hist["Gather"] == 2 * 4  # 28x28 maps upsample, 14x14 gather, 7 and 4 broadcast
    if conv == "sp":
        assert "Slice" not in hist and hist["AveragePool"] >= 16 and hist["Resize"] == 16


def test_rewritten_slices_remain_where_the_producer_is_not_a_conv(folded_export):
    """ResNet-20's SPConv reads the block input (also the residual) and another SPConv's output:
    its channel slices stay, and the check does not flag them."""
    exp = folded_export("resnet20", "sp", 32)
    proto = onnx.load(str(exp.onnx_path))
    assert op_histogram(proto)["Slice"] > 0 and splittable_slices(proto) == []
    assert "BatchNormalization" not in op_histogram(proto)


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
