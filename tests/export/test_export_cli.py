"""`deploy export` / `deploy validate` / `deploy inspect` end to end through the CLI.

Every conv kind on ResNet-20 at 32x32 and ResNet-18 at 64x64 is exported with --fold and
must come out clean (default ONNX domain, TensorRT-parseable, static conv weights), equal to
the training form (max rel error < 1e-4, top-1 agreement 100 %) in folded torch and in ONNX
Runtime at batch 1 and 7, and carry its provenance in the ONNX metadata. Folded CoC/DO-Conv
graphs must be their plain twin's graph (DO-Conv Sec. 3, CoC Sec. 4.2: zero inference
overhead); --no-fold must be flagged (exit 4) with the layers named.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deploy import __version__
from deploy.core.atomic import sha256_file
from deploy.fold.fold import fold_model
from deploy.layers.rewrite_blocks import ChannelScale
from deploy.load.checkpoint import load_checkpoint
from deploy.models.complexity import count_macs, count_params
from tests.conftest import E2E_SAMPLES
from validators.graph import check_graph, compare_reports
from validators.runtimes.onnxruntime import OrtRuntime

R20 = [("resnet20", conv, 32) for conv in ("plain", "coc", "doconv", "ic", "sp")]
R18 = [("resnet18", conv, 64) for conv in ("plain", "coc", "doconv", "sp")]
MAX_REL = 1e-4


def _id(case: tuple) -> str:
    return f"{case[0]}-{case[1]}-{case[2]}"


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _rel_err(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())


def _torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).double().numpy()


def _assert_nothing_foldable_left(coverage: dict, stdout: str) -> None:
    """Fold coverage of a zoo model: no finding; a BN kept after a non-conv op (the host block's BN after an
    SPConv or IC layer) is listed, and such a graph is not called clean."""
    assert coverage["findings"] == [] and coverage["ok"]
    assert coverage["clean"] == (not coverage["kept"]) and "Conv" not in {k["after_op"] for k in coverage["kept"]}
    assert ("fold coverage: clean" in stdout) == coverage["clean"]


def _channel_scale_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """A rewrite's per-channel scale multiplies in eager torch (no MAC there) but exports as the
    depthwise 1x1 convolution it equals, which the graph counts: one MAC per output element."""
    elements = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: elements.append(out.numel()))
             for m in model.modules() if isinstance(m, ChannelScale)]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return sum(elements)


@pytest.mark.parametrize("case", R20 + R18, ids=_id)
def test_folded_export_is_clean_equal_and_labelled(folded_export, case: tuple) -> None:
    arch, conv, size = case
    exp = folded_export(arch, conv, size)
    assert exp.run.exit_code == 0, exp.run.stderr
    rep = exp.report
    shape = (3, size, size)

    # graph gate: clean, and the counts read from the ONNX graph are the folded torch model's
    graph = rep["graph"]
    assert graph["verdict"] == "ok" and graph["reasons"] == []
    assert graph["dynamic_conv_weights"] == [] and graph["einsum_nodes"] == [] and graph["custom_domain_nodes"] == []
    assert "Einsum" not in graph["op_histogram"] and graph["unsupported_ops"] == []
    assert "graph check: clean" in exp.run.stdout
    _assert_nothing_foldable_left(rep["fold_coverage"], exp.run.stdout)
    loaded = load_checkpoint(exp.checkpoint)
    if conv not in ("coc", "doconv"):  # (those two are compared with their plain twin below)
        deploy_model, _ = fold_model(loaded.model)
        assert graph["params"] == sum(p.numel() for p in deploy_model.parameters())  # frozen IC ones kernel included
        assert graph["macs"] == count_macs(deploy_model, shape) + _channel_scale_macs(deploy_model, shape)

    # parity gate: both candidates within 1e-4 * max|ref| and 100 % top-1, on every input
    parity = rep["parity"]
    assert parity["passed"] and parity["batches"] == [1, 3] and parity["samples"] == E2E_SAMPLES
    by_name = {c["name"]: c for c in parity["candidates"]}
    assert set(by_name) == {"folded-torch", "onnxruntime-cpu"}
    for cand in by_name.values():
        assert cand["passed"] and cand["runs"] == 2 * E2E_SAMPLES
        assert 0 <= cand["max_rel_err"] < MAX_REL
        assert cand["top1_agreement"] == 1.0 and cand["min_cosine"] > 0.99999
    assert rep["tolerance"]["rtol"] == 1e-4 and rep["seeds"]["parity"] == 0
    if conv in ("coc", "doconv"):  # every CoC/DO-Conv layer became a Conv2d, exactly (float64 probe)
        layers = {n for n, m in loaded.model.named_modules() if getattr(m, "folds_to_conv", False)}
        assert len(layers) >= 17
        assert {r["name"] for r in rep["fold"]["rows"] if r["kind"].endswith("->Conv2d")} == layers
        assert rep["fold"]["worst_rel_error"] < 1e-10

    # the file: interface, dynamic batch (1 and 7) in ONNX Runtime, metadata, hashes
    proto = onnx.load(str(exp.onnx_path))
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]
    assert _dims(proto.graph.input[0]) == ["batch", *shape]
    ort = OrtRuntime(exp.onnx_path)
    x = np.random.default_rng(7).standard_normal((7, *shape)).astype(np.float32)
    ref = _torch_logits(loaded.model, x)  # one training-form pass (CoC recomputes its kernels every call)
    for rows in (slice(0, 1), slice(0, 7)):
        out = ort.run(x[rows])
        assert out.shape == (len(x[rows]), loaded.num_classes)
        assert _rel_err(ref[rows], out) < MAX_REL
        assert (out.argmax(1) == ref[rows].argmax(1)).all()
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["convdeploy.conv"] == conv and meta["convdeploy.arch"] == arch
    assert meta["convdeploy.folded"] == "yes" and meta["convdeploy.version"] == __version__
    assert meta["convdeploy.source_sha256"] == sha256_file(exp.checkpoint) == rep["input"]["sha256"]
    assert meta["convdeploy.rewrites"] == str(sum(r["kind"] == "rewrite" for r in rep["fold"]["rows"]))
    assert sorted(meta) == sorted(f"convdeploy.{k}" for k in (  # ours only: no onnxsim.* run settings
        "exporter", "torch", "dynamic_axes", "version", "arch", "conv", "conv_kwargs", "folded", "rewrites",
        "source_sha256", "input_shape"))
    assert rep["outputs"]["onnx"]["sha256"] == sha256_file(exp.onnx_path)
    assert rep["input"]["source"] == "convdeploy" and rep["options"]["opset"] == 20
    assert rep["options"]["opset_reason"].startswith("opset 20 writes GELU as one Gelu node")

    # zero inference overhead: a folded CoC/DO-Conv graph is exactly its plain twin's graph
    if conv in ("coc", "doconv"):
        twin = folded_export(arch, "plain", size)
        assert twin.run.exit_code == 0, twin.run.stderr
        mine, plain = check_graph(proto, shape), check_graph(onnx.load(str(twin.onnx_path)), shape)
        assert compare_reports(mine, plain) == []
        assert (mine.params, mine.macs) == (plain.params, plain.macs) == (graph["params"], graph["macs"])
        plain_deploy, _ = fold_model(load_checkpoint(twin.checkpoint).model)
        assert graph["params"] == count_params(plain_deploy) and graph["macs"] == count_macs(plain_deploy, shape)


@pytest.mark.parametrize("conv", ["coc", "doconv"])
def test_no_fold_is_flagged_with_layer_names(zoo_checkpoint, deploy_cli, tmp_path, conv: str) -> None:
    ckpt = zoo_checkpoint("resnet20", conv, 32)
    strict_dir, loose_dir = tmp_path / "strict", tmp_path / "loose"
    strict_dir.mkdir()
    loose_dir.mkdir()
    digest = sha256_file(ckpt)

    strict = deploy_cli("export", ckpt, "--no-fold", "-o", strict_dir / "m.onnx", "--samples", 2)
    assert strict.exit_code == 4, strict.stderr
    line = strict.one_error_line()
    assert "graph check failed" in line and "dynamic conv weights" in line and "--fold" in line
    assert list(strict_dir.iterdir()) == []  # no onnx, no report, no temp files

    loose = deploy_cli("export", ckpt, "--no-fold", "--no-strict", "-o", loose_dir / "m.onnx", "--samples", 2)
    assert loose.exit_code == 0, loose.stderr
    assert sorted(p.name for p in loose_dir.iterdir()) == ["m.onnx", "m.report.json"]
    assert "FLAGGED" in loose.stdout
    rep = json.loads((loose_dir / "m.report.json").read_text())
    graph = rep["graph"]
    assert graph["verdict"] == "failed" and graph["dynamic_conv_weights"]
    # the flagged nodes are named in the strict run's message, with the module they come from
    layer_type = {"coc": "CoCConv2d", "doconv": "DOConv2d"}[conv]
    modules = dict(load_checkpoint(ckpt).model.named_modules())
    for flagged in graph["dynamic_conv_weights"]:
        assert type(modules[flagged["module"]]).__name__ == layer_type
    first = graph["dynamic_conv_weights"][0]
    assert f"{first['module']} ({first['node']})" in line
    assert f"in {len(graph['dynamic_conv_weights'])} Conv node(s)" in line
    if conv == "doconv":
        assert graph["einsum_nodes"] and graph["op_histogram"]["Einsum"] == len(graph["einsum_nodes"])
        assert graph["einsum_nodes"][0] in line and "Einsum" in line
    # unfolded but still the same function: ONNX Runtime vs the training form
    (cand,) = rep["parity"]["candidates"]
    assert cand["name"] == "onnxruntime-cpu" and cand["passed"] and cand["max_rel_err"] < MAX_REL
    meta = {p.key: p.value for p in onnx.load(str(loose_dir / "m.onnx")).metadata_props}
    assert meta["convdeploy.folded"] == "no"
    assert sha256_file(ckpt) == digest


def test_torchscript_exporter(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    ckpt = zoo_checkpoint("resnet20", "doconv", 32)
    run = deploy_cli("export", ckpt, "--exporter", "torchscript", "-o", tmp_path / "ts.onnx", "--samples", 2)
    assert run.exit_code == 0, run.stderr
    rep = json.loads((tmp_path / "ts.report.json").read_text())
    proto = onnx.load(str(tmp_path / "ts.onnx"))
    assert rep["options"]["exporter"] == "torchscript" and rep["options"]["opset"] == 20
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 20
    assert rep["graph"]["verdict"] == "ok" and "Einsum" not in rep["graph"]["op_histogram"]
    assert all(c["max_rel_err"] < MAX_REL and c["top1_agreement"] == 1.0 for c in rep["parity"]["candidates"])
    assert {p.key: p.value for p in proto.metadata_props}["convdeploy.exporter"] == "torchscript"
    assert _dims(proto.graph.input[0]) == ["batch", 3, 32, 32]
    x = np.random.default_rng(1).standard_normal((7, 3, 32, 32)).astype(np.float32)
    assert _rel_err(_torch_logits(load_checkpoint(ckpt).model, x), OrtRuntime(tmp_path / "ts.onnx").run(x)) < MAX_REL


def test_fixed_batch_and_report_path(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    ckpt = zoo_checkpoint("resnet20", "ic", 32)
    (tmp_path / "reports").mkdir()
    report = tmp_path / "reports" / "custom.json"
    run = deploy_cli("export", ckpt, "--batch", 4, "-o", tmp_path / "b4.onnx", "--report", report, "--samples", 2,
                     "--json")
    assert run.exit_code == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b4.onnx", "reports"]  # no b4.report.json
    rep = json.loads(report.read_text())
    assert json.loads(run.stdout) == rep  # --json: the report on stdout, nothing else
    assert "parity vs training-form" in run.stderr  # the human text moved to stderr
    assert rep["parity"]["batches"] == [4] and rep["parity"]["passed"] and rep["options"]["batch"] == "4"
    proto = onnx.load(str(tmp_path / "b4.onnx"))
    assert _dims(proto.graph.input[0]) == [4, 3, 32, 32] and _dims(proto.graph.output[0]) == [4, 10]
    ort = OrtRuntime(tmp_path / "b4.onnx")
    x = np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert _rel_err(_torch_logits(load_checkpoint(ckpt).model, x), ort.run(x)) < MAX_REL
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort.run(x[:1])  # a fixed batch is fixed


def test_validate_writes_a_passing_report(folded_export, deploy_cli, tmp_path) -> None:
    exp = folded_export("resnet20", "doconv", 32)
    assert exp.run.exit_code == 0, exp.run.stderr
    run = deploy_cli("validate", exp.checkpoint, exp.onnx_path, "--samples", 2, "--json-file", tmp_path / "v.json")
    assert run.exit_code == 0, run.stderr
    rep = json.loads((tmp_path / "v.json").read_text())
    printed = deploy_cli("validate", exp.checkpoint, exp.onnx_path, "--samples", 2, "--json")
    assert printed.exit_code == 0 and json.loads(printed.stdout)["parity"] == rep["parity"]
    assert rep["tool"] == "convdeploy validate" and rep["parity"]["passed"]
    assert rep["onnx"]["sha256"] == sha256_file(exp.onnx_path) and rep["input"]["sha256"] == sha256_file(exp.checkpoint)
    assert {c["name"] for c in rep["parity"]["candidates"]} == {"folded-torch", "onnxruntime-cpu"}
    assert all(c["max_rel_err"] < MAX_REL for c in rep["parity"]["candidates"])


# --- an arbitrary standard nn.Module, not from the zoo


class TinyResNet(nn.Module):
    """Conv/BN/ReLU stem, max pooling, one residual block, global pooling and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.conv_a = nn.Conv2d(12, 12, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(12)
        self.conv_b = nn.Conv2d(12, 12, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(12)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        y = torch.relu(self.bn_a(self.conv_a(x)))
        return self.head(torch.relu(x + self.bn_b(self.conv_b(y))))


def tiny_resnet(seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    net = TinyResNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


def test_arbitrary_pickled_module_exports_with_parity(deploy_cli, tmp_path) -> None:
    net = tiny_resnet()
    ckpt = tmp_path / "tiny.pt"
    torch.save(net, ckpt)
    digest = sha256_file(ckpt)
    out = tmp_path / "out"
    out.mkdir()

    refused = deploy_cli("export", ckpt, "-o", out / "t.onnx")
    assert refused.exit_code == 2 and "--trust-pickle" in refused.one_error_line()
    no_size = deploy_cli("export", ckpt, "--trust-pickle", "-o", out / "t.onnx")
    assert no_size.exit_code == 2 and "--input-size" in no_size.one_error_line()
    assert list(out.iterdir()) == []

    run = deploy_cli("export", ckpt, "--trust-pickle", "--input-size", 24, "-o", out / "t.onnx", "--samples", 4)
    assert run.exit_code == 0, run.stderr
    assert "runs code" in run.stderr  # the warning that a pickle runs code
    rep = json.loads((out / "t.report.json").read_text())
    assert rep["input"]["source"] == "pickle" and rep["options"]["input_shape"] == [3, 24, 24]
    assert rep["graph"]["verdict"] == "ok" and "BatchNormalization" not in rep["graph"]["op_histogram"]
    assert rep["graph"]["op_histogram"]["Conv"] == 3 and rep["graph"]["op_histogram"]["MaxPool"] == 1
    folded, _ = fold_model(net)
    assert rep["graph"]["params"] == count_params(folded) == count_params(net) - 3 * 2 * 12 + 2 * 12
    assert rep["graph"]["macs"] == count_macs(net, (3, 24, 24))
    for cand in rep["parity"]["candidates"]:
        assert cand["passed"] and cand["max_rel_err"] < MAX_REL and cand["top1_agreement"] == 1.0
    x = np.random.default_rng(3).standard_normal((7, 3, 24, 24)).astype(np.float32)
    assert _rel_err(_torch_logits(net, x), OrtRuntime(out / "t.onnx").run(x)) < MAX_REL
    assert {p.key: p.value for p in onnx.load(str(out / "t.onnx")).metadata_props}["convdeploy.arch"] == "custom"
    assert sha256_file(ckpt) == digest


def test_arbitrary_state_dict_needs_an_arch(deploy_cli, tmp_path) -> None:
    ckpt = tmp_path / "tiny_sd.pt"
    torch.save(tiny_resnet().state_dict(), ckpt)
    bare = deploy_cli("export", ckpt, "-o", tmp_path / "t.onnx")
    assert bare.exit_code == 2
    assert "bare state_dict" in (line := bare.one_error_line()) and "--arch and --conv" in line
    wrong = deploy_cli("export", ckpt, "--arch", "resnet20", "--conv", "plain", "-o", tmp_path / "t.onnx")
    assert wrong.exit_code == 2
    line = wrong.one_error_line()
    assert "do not fit resnet20" in line and "unexpected keys bn_a.bias" in line and "missing keys bn1.bias" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_sd.pt"]


# --- deploy inspect


def test_inspect_onnx_json(folded_export, deploy_cli) -> None:
    exp = folded_export("resnet20", "coc", 32)
    assert exp.run.exit_code == 0, exp.run.stderr
    run = deploy_cli("inspect", exp.onnx_path, "--json")
    assert run.exit_code == 0, run.stderr
    info = json.loads(run.stdout)
    graph = exp.report["graph"]
    assert info["verdict"] == "ok" and info["opset"] == 20
    assert info["op_histogram"] == graph["op_histogram"] == {
        "Add": 9, "Conv": 21, "Gemm": 1, "ReduceMean": 1, "Relu": 19, "Reshape": 1}
    assert (info["params"], info["macs"]) == (graph["params"], graph["macs"])
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert info["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 10]}]
    meta = info["metadata"]
    assert meta["convdeploy.conv"] == "coc" and meta["convdeploy.folded"] == "yes"
    assert all(k.startswith("convdeploy.") for k in meta), meta  # onnxsim's run settings are not kept
    assert info["fold_coverage"]["clean"] is True
    human = deploy_cli("inspect", exp.onnx_path)
    assert human.exit_code == 0, human.stderr
    assert "input  input  float32  [batch, 3, 32, 32]" in human.stdout and "graph check: clean" in human.stdout
    assert "Conv 21" in human.stdout and "fold coverage: clean" in human.stdout


def test_inspect_checkpoint_json(zoo_checkpoint, deploy_cli) -> None:
    ckpt = zoo_checkpoint("resnet20", "sp", 32)
    run = deploy_cli("inspect", ckpt, "--json")
    assert run.exit_code == 0, run.stderr
    info = json.loads(run.stdout)
    model = load_checkpoint(ckpt).model
    assert (info["arch"], info["conv"], info["conv_kwargs"]) == ("resnet20", "sp", {"ratio": 0.5})
    assert info["params"] == count_params(model) and info["source"] == "convdeploy"
    assert info["input_shape"] == [3, 32, 32] and info["num_classes"] == 10 and info["sha256"] == sha256_file(ckpt)


@pytest.mark.parametrize("kind", ["random.onnx", "random.pt", "missing.onnx", "directory"])
def test_inspect_bad_file(deploy_cli, tmp_path, kind: str) -> None:
    target = tmp_path / kind
    if kind.startswith("random"):
        target.write_bytes(np.random.default_rng(5).bytes(3000))
    elif kind == "directory":
        target.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    run = deploy_cli("inspect", target, "--json")
    assert run.exit_code == 2 and run.stdout == ""
    line = run.one_error_line()
    assert str(target) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_scnet50_export_at_64(deploy_cli, tmp_path) -> None:
    """SCNet-50 (25.6 M params) end to end at 64x64; pooling_r=2 because layer4 is 2x2 there
    (the default r=4 cannot pool a 2x2 map: that is an input size the model cannot take)."""
    from deploy.load.checkpoint import save_checkpoint
    from deploy.models.random_init import randomize_model
    from deploy.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("scnet50", "sc", pooling_r=2)
    model.input_shape = (3, 64, 64)
    randomize_model(model, (3, 64, 64), seed=0)
    ckpt = save_checkpoint(model.eval(), tmp_path / "sc50.pt")
    run = deploy_cli("export", ckpt, "-o", tmp_path / "sc50.onnx", "--samples", 2)
    assert run.exit_code == 0, run.stderr
    rep = json.loads((tmp_path / "sc50.report.json").read_text())
    assert rep["graph"]["verdict"] == "ok" and rep["input"]["conv_kwargs"] == {"pooling_r": 2}
    hist = rep["graph"]["op_histogram"]
    assert hist["Sigmoid"] == hist["AveragePool"] == 16  # one SCConv gate per bottleneck
    # layer4's last two blocks pool 2x2 to 1x1: their Up() is a broadcast (rewrite), the others integer upsamplings
    assert hist["Resize"] == 14 and "Shape" not in hist and hist["Concat"] == 16  # no size computations left
    assert "BatchNormalization" not in hist  # every Conv+BN pair, SCConv's k2/k3/k4 included, fused
    assert rep["fold_coverage"]["clean"] and "fold coverage: clean" in run.stdout
    assert {c["name"] for c in rep["parity"]["candidates"]} == {"folded-torch", "onnxruntime-cpu"}
    assert all(c["max_rel_err"] < MAX_REL and c["top1_agreement"] == 1.0 for c in rep["parity"]["candidates"])
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "sc50.onnx")).metadata_props}
    assert (meta["convdeploy.arch"], meta["convdeploy.conv"]) == ("scnet50", "sc")
    x = np.random.default_rng(4).standard_normal((7, 3, 64, 64)).astype(np.float32)
    assert _rel_err(_torch_logits(model, x), OrtRuntime(tmp_path / "sc50.onnx").run(x)) < MAX_REL
