"""A sixth conv kind from one test-local file and one registration call, end to end.

tests/toy_conv.py is written as a new paper's layer would be; registering it makes it a
zoo kind (``build_model``), a row of `deploy zoo list`, a `deploy zoo create --conv toy
--conv-opt ...` checkpoint and a folded, parity-checked `deploy export`.
"""

from __future__ import annotations

import json

import pytest
import torch

from deploy.layers.registry import conv_kind, register_conv_kind, unregister_conv_kind
from deploy.models.zoo import build_model, supported_convs
from tests.toy_conv import TOY, ToyConv2d


@pytest.fixture(autouse=True, scope="module")
def toy_registered():
    register_conv_kind(TOY)
    yield
    unregister_conv_kind("toy")


def test_build_model_with_the_toy_kind():
    model = build_model("resnet20", conv="toy", gain=0.5)
    toys = [m for m in model.modules() if isinstance(m, ToyConv2d)]
    assert len(toys) == 18  # the 3x3s of 9 basic blocks; the stem and shortcuts stay plain
    assert all(float(t.gain.detach()) == 0.5 for t in toys) and model.conv_kwargs == {"gain": 0.5}
    assert "toy" in supported_convs("resnet20") and "toy" in supported_convs("resnet50")
    assert conv_kind("toy").option("learn_gain").type is bool


def test_zoo_list_shows_each_variant(deploy_cli):
    run = deploy_cli("zoo", "list", "--arch", "resnet20", "--json")
    assert run.exit_code == 0, run.stderr
    rows = [r for r in json.loads(run.stdout)["rows"] if r["conv"] == "toy"]
    assert [r["conv_kwargs"] for r in rows] == [{}, {"gain": 2.0}]
    plain = next(r for r in json.loads(run.stdout)["rows"] if r["conv"] == "plain")
    assert rows[0]["params"] == plain["params"] and rows[0]["macs"] == plain["macs"]  # folds to the plain twin


def test_create_then_export_with_parity(deploy_cli, tmp_path):
    ckpt, onnx_path = tmp_path / "toy.pt", tmp_path / "toy.onnx"
    run = deploy_cli("zoo", "create", "resnet20", "--conv", "toy", "--conv-opt", "gain=0.75",
                     "--conv-opt", "learn_gain=false", "--input-size", "16", "-o", ckpt)
    assert run.exit_code == 0, run.stderr
    saved = torch.load(ckpt, weights_only=True)
    assert saved["conv"] == "toy" and saved["conv_kwargs"] == {"gain": 0.75, "learn_gain": False}
    run = deploy_cli("export", ckpt, "--fold", "-o", onnx_path, "--samples", "2")
    assert run.exit_code == 0, run.stderr
    report = json.loads((tmp_path / "toy.report.json").read_text())
    kinds = [r["kind"] for r in report["fold"]["rows"]]
    assert kinds.count("ToyConv2d->Conv2d") == 18
    assert report["fold"]["worst_rel_error"] < 1e-12
    assert report["parity"]["passed"] and report["graph"]["verdict"] == "ok"
    assert report["input"]["conv"] == "toy"


@pytest.mark.parametrize("args, needle", [
    (["--conv", "toy", "--conv-opt", "scale=2"], "conv 'toy' does not take scale: its options are gain, learn_gain"),
    (["--conv", "toy", "--conv-opt", "gain=big"], "option gain='big' is not a number"),
    (["--conv", "toy", "--conv-opt", "gain=nan"], "option gain=nan must be a finite number"),
    (["--conv", "ic", "--conv-opt", "gain=2"], "conv 'ic' does not take gain: its options are alpha, learn_alpha, bias"),
])
def test_bad_conv_options_exit_2_naming_the_valid_keys(deploy_cli, tmp_path, args, needle):
    out = tmp_path / "m.pt"
    run = deploy_cli("zoo", "create", "resnet20", *args, "-o", out)
    assert run.exit_code == 2
    assert needle in run.one_error_line()
    assert not out.exists()


def test_registering_a_kind_again_warns() -> None:
    with pytest.warns(UserWarning, match="'toy' is registered again"):
        register_conv_kind(TOY)
    assert conv_kind("toy").module is TOY.module
