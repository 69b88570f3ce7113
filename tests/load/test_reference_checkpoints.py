"""Checkpoints written by the papers' reference code load strictly.

The state_dicts below use the reference implementations' key names and shapes (SCNet's
scnet.py, SPConv's resnet_sp.py, the DO-Conv layer; see the papers' README): they are built
from our zoo models, whose module names mirror the references', after asserting that the
names and shapes are the references'. Saved bare (as the reference training scripts do) or
wrapped as ``{"state_dict": {"module.…": …}}`` (DataParallel), they must be recognised from
their keys alone, load strictly into the same weights, and export; a missing or an unexpected
key is an error listing the keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deploy.core.atomic import sha256_file
from deploy.load.checkpoint import load_checkpoint
from deploy.load.state_dict import recognise_reference
from deploy.models.complexity import count_params
from deploy.models.zoo import build_model


def _bare(state: dict, path: Path) -> Path:
    torch.save({k: v.clone() for k, v in state.items()}, path)
    return path


def _data_parallel(state: dict, path: Path) -> Path:
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v.clone() for k, v in state.items()}}, path)
    return path


def _inspect(deploy_cli, path: Path) -> dict:
    run = deploy_cli("inspect", path, "--json")
    assert run.exit_code == 0, run.stderr
    return json.loads(run.stdout)


def _assert_same_weights(path: Path, state: dict) -> None:
    loaded = load_checkpoint(path).model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.fixture(scope="module")
def scnet50_state() -> dict:
    torch.manual_seed(0)
    return build_model("scnet50", "sc").state_dict()


def test_scnet50_layout_is_the_reference(scnet50_state: dict) -> None:
    """SCBottleneck (scnet.py): two half-width branches, group_width = planes / 2."""
    block = {k[len("layer1.0."):]: tuple(v.shape) for k, v in scnet50_state.items() if k.startswith("layer1.0.")}
    expected_weights = {
        "conv1_a.weight": (32, 64, 1, 1), "conv1_b.weight": (32, 64, 1, 1),
        "k1.0.weight": (32, 32, 3, 3), "scconv.k2.1.weight": (32, 32, 3, 3),
        "scconv.k3.0.weight": (32, 32, 3, 3), "scconv.k4.0.weight": (32, 32, 3, 3),
        "conv3.weight": (256, 64, 1, 1), "downsample.0.weight": (256, 64, 1, 1),
    }
    assert {k: v for k, v in block.items() if k in expected_weights} == expected_weights
    bns = {"bn1_a": 32, "bn1_b": 32, "k1.1": 32, "scconv.k2.2": 32, "scconv.k3.1": 32, "scconv.k4.1": 32,
           "bn3": 256, "downsample.1": 256}
    for bn, width in bns.items():
        for stat in ("weight", "bias", "running_mean", "running_var"):
            assert block[f"{bn}.{stat}"] == (width,)
    assert len(block) == len(expected_weights) + 5 * len(bns)  # + num_batches_tracked; nothing else
    assert {k for k in scnet50_state if not k.startswith("layer")} == {
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
        "fc.weight", "fc.bias"}
    params = sum(v.numel() for k, v in scnet50_state.items() if "running" not in k and "num_batches" not in k)
    assert round(params / 1e6, 2) == 25.56  # SCNet Table 1


def test_scnet50_reference_bare_and_data_parallel(scnet50_state: dict, deploy_cli, tmp_path) -> None:
    for path in (_bare(scnet50_state, tmp_path / "scnet50.pth"), _data_parallel(scnet50_state, tmp_path / "dp.pth.tar")):
        info = _inspect(deploy_cli, path)
        assert (info["source"], info["arch"], info["conv"]) == ("reference-scnet", "scnet50", "sc")
        assert round(info["params"] / 1e6, 2) == 25.56 and info["num_classes"] == 1000
        _assert_same_weights(path, scnet50_state)


def test_scnet50_missing_and_unexpected_keys_are_listed(scnet50_state: dict, deploy_cli, tmp_path) -> None:
    state = dict(scnet50_state)
    del state["layer3.2.scconv.k3.1.running_var"]
    missing = _bare(state, tmp_path / "missing.pth")
    state = dict(scnet50_state)
    state["layer1.0.scconv.k5.0.weight"] = torch.zeros(32, 32, 3, 3)
    unexpected = _bare(state, tmp_path / "unexpected.pth")
    digests = {p: sha256_file(p) for p in (missing, unexpected)}
    for path, listed in ((missing, "missing keys layer3.2.scconv.k3.1.running_var; unexpected keys none"),
                         (unexpected, "missing keys none; unexpected keys layer1.0.scconv.k5.0.weight")):
        run = deploy_cli("export", path, "-o", tmp_path / "m.onnx")
        assert run.exit_code == 2
        line = run.one_error_line()
        assert "do not fit scnet50 (conv=sc)" in line and listed in line
    assert {p: sha256_file(p) for p in digests} == digests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["missing.pth", "unexpected.pth"]


def test_scnet_v1d_reference_is_recognised(deploy_cli, tmp_path) -> None:
    """scnet.py's scnet50_v1d / scnet101_v1d: ResNet-D deep stem (conv1.0/.3/.6, 32 resp. 64 wide), average-pool
    downsampling (downsample.0 pool, .1 conv, .2 BN) and avd (a parameter-free pooling): keys alone tell them apart."""
    torch.manual_seed(0)
    state = build_model("scnet50_v1d").state_dict()
    stem = {k: tuple(v.shape) for k, v in state.items() if k.startswith("conv1.") and k.endswith("weight")}
    assert stem == {"conv1.0.weight": (32, 3, 3, 3), "conv1.1.weight": (32,), "conv1.3.weight": (32, 32, 3, 3),
                    "conv1.4.weight": (32,), "conv1.6.weight": (64, 32, 3, 3)}
    assert tuple(state["layer2.0.downsample.1.weight"].shape) == (512, 256, 1, 1)
    assert tuple(state["layer2.0.downsample.2.running_var"].shape) == (512,)
    assert not any(k.startswith("layer2.0.downsample.0") or "avd_layer" in k for k in state)
    for path in (_bare(state, tmp_path / "scnet50_v1d.pth"), _data_parallel(state, tmp_path / "v1d.pth.tar")):
        info = _inspect(deploy_cli, path)
        assert (info["source"], info["arch"], info["conv"], info["conv_kwargs"]) == (
            "reference-scnet", "scnet50_v1d", "sc", {"avd": True})
        _assert_same_weights(path, state)
    with torch.device("meta"):
        deep = build_model("scnet101_v1d").state_dict()
        plain = build_model("scnet101").state_dict()
    assert tuple(deep["conv1.6.weight"].shape) == (128, 64, 3, 3) and tuple(deep["bn1.weight"].shape) == (128,)
    assert recognise_reference(deep) == ("reference-scnet", "scnet101_v1d", "sc", {})
    assert recognise_reference(plain) == ("reference-scnet", "scnet101", "sc", {})
    assert "conv1.weight" in plain and "conv1.weight" not in deep  # the 7x7 stem vs the deep stem


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_spconv_resnet50_reference(deploy_cli, tmp_path, ratio: float) -> None:
    """resnet_sp.py: only Bottleneck.conv2 is an SPConv_3x3 (gwc, pwc, conv1x1 WITH bias, bn1, bn2)."""
    torch.manual_seed(0)
    model = build_model("resnet50", "sp", ratio=ratio)
    state = model.state_dict()
    sp = {k.split("layer1.0.conv2.")[1]: tuple(v.shape) for k, v in state.items() if k.startswith("layer1.0.conv2.")}
    rep = int(64 * ratio)
    assert {k: v for k, v in sp.items() if k.endswith("weight") or k.endswith("bias")} == {
        "gwc.weight": (64, rep // 2, 3, 3), "pwc.weight": (64, rep, 1, 1),
        "conv1x1.weight": (64, 64 - rep, 1, 1), "conv1x1.bias": (64,),
        "bn1.weight": (64,), "bn1.bias": (64,), "bn2.weight": (64,), "bn2.bias": (64,)}
    assert "layer1.0.conv1.weight" in state and "layer1.0.conv3.weight" in state and "layer1.0.bn2.weight" in state
    path = _bare(state, tmp_path / "resnet50_sp.pth")
    info = _inspect(deploy_cli, path)
    assert (info["source"], info["arch"], info["conv"], info["conv_kwargs"]) == (
        "reference-spconv", "resnet50", "sp", {"ratio": ratio})
    assert info["params"] == count_params(model)
    _assert_same_weights(path, state)


def test_spconv_basic_block_state_dict_is_recognised(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    """ResNet-20/18 put SPConv in both convs of a basic block (no block conv1.weight to read alpha from)."""
    state = torch.load(zoo_checkpoint("resnet20", "sp", 32), weights_only=True)["state_dict"]
    path = _bare(state, tmp_path / "r20_sp.pth")
    info = _inspect(deploy_cli, path)
    assert (info["source"], info["arch"], info["conv"], info["conv_kwargs"]) == (
        "reference-spconv", "resnet20", "sp", {"ratio": 0.5})
    torch.manual_seed(0)
    quarter = build_model("resnet18", "sp", ratio=0.25).state_dict()
    info = _inspect(deploy_cli, _bare(quarter, tmp_path / "r18_sp.pth"))
    assert (info["arch"], info["conv_kwargs"]) == ("resnet18", {"ratio": 0.25})
    # told what it is, the recogniser is not consulted at all
    told = deploy_cli("export", path, "--arch", "resnet20", "--conv", "sp", "--ratio", "0.25", "-o", tmp_path / "m.onnx")
    assert told.exit_code == 2
    assert "layer1.0.conv1.gwc.weight (checkpoint (16, 4, 3, 3) vs model (16, 2, 3, 3))" in told.one_error_line()


def test_doconv_reference_exports(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    """The DO-Conv layer's parameters: W (out, in, D_mul), D and d_diag (in, M*N, D_mul); 1x1 has no D."""
    ckpt = zoo_checkpoint("resnet20", "doconv", 32)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert tuple(state["layer2.0.conv1.W"].shape) == (32, 16, 9)
    assert tuple(state["layer2.0.conv1.D"].shape) == tuple(state["layer2.0.conv1.d_diag"].shape) == (16, 9, 9)
    assert torch.equal(state["layer2.0.conv1.d_diag"][0], torch.eye(9))
    assert state["layer2.0.conv1.D"].abs().max() > 0  # trained (here: seeded) D, not the zero init
    wrapped = _data_parallel(state, tmp_path / "dp.pth")
    info = _inspect(deploy_cli, wrapped)
    assert (info["source"], info["arch"], info["conv"]) == ("reference-doconv", "resnet20", "doconv")
    _assert_same_weights(wrapped, state)

    run = deploy_cli("export", wrapped, "-o", tmp_path / "dp.onnx", "--samples", 2)
    assert run.exit_code == 0, run.stderr
    rep = json.loads((tmp_path / "dp.report.json").read_text())
    assert rep["input"]["source"] == "reference-doconv" and rep["input"]["sha256"] == sha256_file(wrapped)
    assert rep["graph"]["verdict"] == "ok" and rep["graph"]["op_histogram"]["Conv"] == 21
    for cand in rep["parity"]["candidates"]:
        assert cand["passed"] and cand["max_rel_err"] < 1e-4 and cand["top1_agreement"] == 1.0

    del state["layer2.0.conv1.D"]
    broken = _bare(state, tmp_path / "no_D.pth")
    run = deploy_cli("inspect", broken)
    assert run.exit_code == 2
    assert "missing keys layer2.0.conv1.D; unexpected keys none" in run.one_error_line()
