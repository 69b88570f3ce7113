"""`deploy quantize` on a digits-trained ResNet-20 with PNG folders, as a user would run it
(deploy/quantize/): the gate passes with its measured drop, a model made to quantize badly is
refused naming its layer and then passes by keeping that layer in float, and bad data writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from validators.fold_coverage import check_fold_coverage
from validators.graph import check_graph
from validators.qdq import qdq_findings

STANDARD = {"", "ai.onnx"}


def _quantize(deploy_cli, model: Path, out: Path, calib, evaluation, *extra):
    """The human text on stderr and the record on stdout (``--json``), unless ``extra`` asks otherwise."""
    extra = extra if "--json-file" in extra else ("--json", *extra)
    return deploy_cli("quantize", model, "--calib", calib, "--eval", evaluation, "-o", out, "--calib-limit", 300,
                      *extra)


def _outputs(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_png_folders_gate_passes_with_symmetric_int8(trained, digits_train_pngs, deploy_cli, tmp_path) -> None:
    """Calibrated on the training split's PNGs and gated on the test split's: the drop is measured with its
    interval, the file holds standard operators and symmetric int8 Q/DQ (zero points 0), and computes what
    the report says."""
    _, onnx_path, test_pngs, meta = trained
    out = tmp_path / "m.int8.onnx"
    run = _quantize(deploy_cli, onnx_path, out, digits_train_pngs, test_pngs)
    assert run.exit_code == 0, run.stdout + run.stderr
    rep = json.loads(run.stdout)
    gate = rep["gate"]
    assert gate["passed"] and gate["measure"] == "top-1 drop" and gate["loss_points"] <= 1.0
    diff = gate["comparison"]["difference"]
    assert diff["low"] <= diff["value"] <= diff["high"] and abs(diff["value"] + gate["loss_points"] / 100) < 1e-9
    assert abs(rep["fp32_top1"]["value"] - meta["test_accuracy"]) <= 1 / 359 + 1e-12  # the PNGs, as eval reads them
    assert rep["calib"]["images"] == 300 and rep["eval"]["images"] == 359 and rep["kept_float"] == []
    assert rep["output_sqnr_db"]["output"] > 20 and rep["bytes"]["int8"] < rep["bytes"]["fp32"] / 2

    proto = onnx.load(str(out))
    assert {n.domain for n in proto.graph.node} <= STANDARD and qdq_findings(proto) == []
    zero_points = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert all(producers.get(c.input[0]) == "DequantizeLinear" and producers.get(c.input[1]) == "DequantizeLinear"
               for c in convs)
    graph, fp32_graph = check_graph(proto), check_graph(onnx.load(str(onnx_path)))
    assert graph.ok and graph.int8_mac_share == 1.0 and fp32_graph.int8_mac_share is None  # Q/DQ taken, all MACs int8
    assert graph.params == fp32_graph.params and graph.macs == fp32_graph.macs  # int8 weights counted, scales not
    assert check_fold_coverage(proto).clean  # int8 weights behind DequantizeLinear are constants
    layers = json.loads(deploy_cli("inspect", out, "--layers", "--json").stdout)["layers"]
    assert {r["precision"] for r in layers if r["op"] == "Conv"} == {"int8"}
    assert {r["precision"] for r in layers if r["op"] == "Relu"} == {"float"}
    meta_props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta_props["convdeploy.preprocess"])["color"] == "gray"
    assert json.loads(meta_props["convdeploy.quantization"])["target"] == "tensorrt"
    assert json.loads((tmp_path / "m.int8.report.json").read_text())["outputs"]["onnx"]["path"] == str(out)


def _outlier_model(onnx_path: Path, out: Path) -> str:
    """The same function with one activation channel 1000x larger: the first Conv -> Relu -> Conv chain's
    channel 0 is scaled up in the first conv and down in the second (ReLU commutes with a positive scale).
    A per-tensor activation scale then crushes every other channel of that tensor. Returns the name of the
    conv that reads it."""
    proto = onnx.load(str(onnx_path))
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: t for t in proto.graph.initializer}
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        relu = consumers.get(conv.output[0], [])
        if len(relu) != 1 or relu[0].op_type != "Relu":
            continue
        nxt = consumers.get(relu[0].output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Conv":
            w1, b1 = (numpy_helper.to_array(inits[conv.input[i]]).copy() for i in (1, 2))
            w2 = numpy_helper.to_array(inits[nxt[0].input[1]]).copy()
            w1[0] *= 1000.0
            b1[0] *= 1000.0
            w2[:, 0] /= 1000.0
            for name, value in ((conv.input[1], w1), (conv.input[2], b1), (nxt[0].input[1], w2)):
                inits[name].CopyFrom(numpy_helper.from_array(value, name))
            onnx.save(proto, str(out))
            return nxt[0].name
    raise AssertionError("no Conv -> Relu -> Conv chain")


def test_an_activation_outlier_is_refused_naming_its_layer_and_kept_float_by_auto(trained, digits_train_pngs,
                                                                                   deploy_cli, tmp_path) -> None:
    _, onnx_path, test_pngs, _ = trained
    model = tmp_path / "outlier.onnx"
    victim = _outlier_model(onnx_path, model)
    x = np.random.default_rng(0).standard_normal((4, *[d.dim_value for d in
                                                      onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim[1:]]))
    np.testing.assert_allclose(_outputs(model, x.astype(np.float32)), _outputs(onnx_path, x.astype(np.float32)),
                               rtol=1e-3, atol=1e-3)  # the same function

    out, record = tmp_path / "outlier.int8.onnx", tmp_path / "refused.json"
    run = _quantize(deploy_cli, model, out, digits_train_pngs, test_pngs, "--json-file", record)
    assert run.exit_code == 3, run.stdout + run.stderr
    line = run.one_error_line()
    assert "INT8 refused: top-1 drop" in line and "most sensitive layers" in line
    assert line.split("most sensitive layers: ")[1].startswith(victim), line
    assert not out.exists() and not (tmp_path / "outlier.int8.report.json").exists()
    refused = json.loads(record.read_text())  # the record of a refusal, for CI logs
    assert not refused["passed"] and refused["gate"]["loss_points"] > 5  # a real failure, not a near miss

    run = _quantize(deploy_cli, model, out, digits_train_pngs, test_pngs, "--keep-float", "auto")
    assert run.exit_code == 0, run.stdout + run.stderr
    rep = json.loads(run.stdout)
    assert rep["kept_float"][0] == victim and rep["gate"]["passed"]
    steps = rep["steps"]
    assert steps[0]["added"] is None and not steps[0]["gate"]["passed"] and steps[1]["added"] == victim
    assert steps[-1]["gate"]["loss_points"] < steps[0]["gate"]["loss_points"]
    victim_node = next(n for n in onnx.load(str(out)).graph.node if n.name == victim)
    producers = {o: n.op_type for n in onnx.load(str(out)).graph.node for o in n.output}
    assert producers[victim_node.input[0]] != "DequantizeLinear"  # its activation stays float


def _with_batchnorm(onnx_path: Path, out: Path) -> Path:
    """The model with a BatchNormalization after its first Conv: what an export without a fold leaves."""
    proto = onnx.load(str(onnx_path))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    channels = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == conv.input[1])).shape[0]
    stats = {"bn_scale": 1.5, "bn_bias": 0.1, "bn_mean": 0.2, "bn_var": 2.0}
    for name, value in stats.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.full(channels, value, np.float32), name))
    normalised = conv.output[0] + "_bn"
    for node in proto.graph.node:
        node.input[:] = [normalised if i == conv.output[0] else i for i in node.input]
    index = list(proto.graph.node).index(conv)
    proto.graph.node.insert(index + 1, onnx.helper.make_node("BatchNormalization", [conv.output[0], *stats],
                                                             [normalised], name="bn_left"))
    onnx.save(proto, str(out))
    return out


def test_overlapping_data_and_unfolded_models_are_refused(trained, deploy_cli, tmp_path) -> None:
    _, onnx_path, test_pngs, _ = trained
    out = tmp_path / "q.onnx"
    run = _quantize(deploy_cli, onnx_path, out, test_pngs, test_pngs)
    assert run.exit_code == 2 and "also evaluation images" in run.one_error_line()
    unfolded = _with_batchnorm(onnx_path, tmp_path / "unfolded.onnx")
    run = _quantize(deploy_cli, unfolded, out, "digits:train", test_pngs)
    assert run.exit_code == 2 and "is not folded" in run.one_error_line()
    assert not out.exists()


@pytest.mark.parametrize("case", ["empty", "not-images", "wrong-channels"])
def test_bad_calibration_data_is_one_line_and_writes_nothing(case, trained, deploy_cli, tmp_path) -> None:
    _, onnx_path, test_pngs, _ = trained
    calib = tmp_path / "calib"
    calib.mkdir()
    if case == "not-images":
        for i in range(3):
            (calib / f"{i}.png").write_text("not a png")
    elif case == "wrong-channels":
        calib = tmp_path / "x.npz"
        np.savez(calib, x=np.zeros((8, 1, 32, 32), np.float32))
    out = tmp_path / "q.onnx"
    run = _quantize(deploy_cli, onnx_path, out, calib, test_pngs)
    assert run.exit_code == 2, run.stdout + run.stderr
    assert run.one_error_line()
    assert not out.exists() and not (tmp_path / "q.report.json").exists()


def test_export_int8_writes_both_pairs_and_checks_its_options_first(trained, deploy_cli, tmp_path) -> None:
    ckpt, _, test_pngs, _ = trained
    out = tmp_path / "e.onnx"
    for args, needle in (((), "give --calib DATA and --eval DATA"), (("--calib", "digits:train"), None)):
        run = deploy_cli("export", ckpt, "-o", out, "--int8", *args, "--samples", 1, "--exporter", "torchscript")
        assert run.exit_code == 2 and (needle is None or needle in run.stderr), run.stderr
    run = deploy_cli("export", ckpt, "-o", out, "--calib", "digits:train", "--samples", 1)
    assert run.exit_code == 2 and "add --int8" in run.stderr
    assert not list(tmp_path.iterdir())  # refused before any work
    run = deploy_cli("export", ckpt, "-o", out, "--int8", "--calib", "digits:train", "--eval", test_pngs,
                     "--target", "cpu", "--samples", 1, "--exporter", "torchscript", "--no-rewrite-diff")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.int8.onnx", "e.int8.report.json", "e.onnx", "e.report.json"]
    rep = json.loads((tmp_path / "e.int8.report.json").read_text())
    assert rep["target"] == "cpu" and rep["gate"]["passed"] and rep["model"] == str(out)
    proto = onnx.load(str(tmp_path / "e.int8.onnx"))
    assert any("uint8" in f for f in qdq_findings(proto))  # the CPU flavour: what TensorRT would refuse, said so
