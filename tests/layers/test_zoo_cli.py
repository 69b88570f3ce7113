"""`deploy zoo list | create | train` through the CLI, and the bundled digits split."""

import json

import torch
from typer.testing import CliRunner

from deploy.cli import app
from deploy.load.checkpoint import load_checkpoint
from deploy.models.digits import load_digits

runner = CliRunner()


def test_zoo_list_json_reproduces_the_paper_counts():
    res = runner.invoke(app, ["zoo", "list", "--arch", "resnet50", "--arch", "resnet20", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert "FlopCounterMode" in doc["conventions"]["macs"] and "thop" in doc["conventions"]["macs_thop"]
    rows = {(r["arch"], r["conv"], r["conv_kwargs"].get("ratio")): r for r in doc["rows"]}
    assert len(rows) == 2 * 7  # plain, coc, doconv, ic and sp at three ratios
    r50 = rows[("resnet50", "plain", None)]
    assert r50["params"] == 25_557_032 and r50["macs"] == 4_089_184_256
    for conv in ("coc", "doconv"):  # folded = plain twin
        assert (rows[("resnet50", conv, None)]["params"], rows[("resnet50", conv, None)]["macs"]) == (
            r50["params"], r50["macs"])
    sp = rows[("resnet50", "sp", 0.5)]
    assert abs(sp["params"] - 18.34e6) <= 0.01e6 and sp["paper_printed"] == ["18.34 M", "2.97 G"]
    assert abs(sp["macs"] / sp["paper_macs"] - 1) < 0.03
    assert sp["paper_convention"] == "thop" and abs(sp["macs_thop"] / sp["paper_macs"] - 1) < 0.002
    assert rows[("resnet20", "plain", None)]["macs_thop"] == 41_620_160  # SPConv Table 1: 41.62 M


def test_zoo_list_thop_convention_and_bad_convention():
    res = runner.invoke(app, ["zoo", "list", "--arch", "resnet20", "--convention", "thop"])
    assert res.exit_code == 0 and "41.620" in res.stdout and "17.723" in res.stdout
    assert "thop's" in res.stdout and "* SPConv's tables" not in res.stdout
    bad = runner.invoke(app, ["zoo", "list", "--convention", "flops"])
    assert bad.exit_code == 2 and "choose conv or thop" in bad.stderr


def test_zoo_list_table_and_unknown_arch():
    res = runner.invoke(app, ["zoo", "list", "--arch", "scnet50"])
    assert res.exit_code == 0 and "25.565" in res.stdout and "3.925 G" in res.stdout
    bad = runner.invoke(app, ["zoo", "list", "--arch", "resnet9"])
    assert bad.exit_code == 2 and "unknown arch resnet9" in bad.stderr


def test_zoo_create_is_seeded_and_has_nontrivial_batchnorm(tmp_path):
    paths = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        path = tmp_path / f"{name}.pt"
        res = runner.invoke(app, ["zoo", "create", "resnet20", "--conv", "sp", "--ratio", "0.25",
                                  "--seed", str(seed), "-o", str(path)])
        assert res.exit_code == 0, res.output
        paths.append(path)
    a, b, c = (load_checkpoint(p) for p in paths)
    assert (a.arch, a.conv, a.conv_kwargs, a.input_shape) == ("resnet20", "sp", {"ratio": 0.25}, (3, 32, 32))
    sa, sb, sc = (x.model.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    bn = a.model.bn1
    assert bn.running_mean.abs().min() > 0 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight)) and bn.bias.abs().max() > 0


def test_zoo_create_bad_options_write_nothing(tmp_path):
    cases = [
        (["resnet20", "--conv", "plain", "--ratio", "0.5"], "conv 'plain' does not take ratio: it takes no options"),
        (["resnet20", "--conv", "sp", "--conv-opt", "alpha=2"], "conv 'sp' does not take alpha: its options are ratio"),
        (["resnet20", "--conv", "sp", "--conv-opt", "ratio=half"], "option ratio='half' is not a number"),
        (["resnet20", "--conv", "coc", "--conv-opt", "skip=maybe"], "option skip='maybe' is not true or false"),
        (["resnet20", "--conv", "sp", "--conv-opt", "ratio"], "give KEY=VALUE"),
        (["resnet20", "--conv-opt", "ratio=0.5"], "need --conv"),
        (["resnet20", "--conv", "sp", "--ratio", "0.5", "--conv-opt", "ratio=0.25"], "both given"),
        (["resnet20", "--conv", "nope"], "unknown conv 'nope': choose one of plain, coc, doconv, ic, sc, sp"),
        (["resnet20", "--conv", "sp", "--ratio", "0.3"], "ratio"),
        (["resnet20", "--conv", "sc"], "cannot be built with conv='sc'"),
        (["scnet50", "--conv", "sc", "--input-size", "64"], "cannot take a 64x64 input"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, ["zoo", "create", *args, "-o", str(tmp_path / "m.pt")])
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["zoo", "create", "resnet20", "-o", str(tmp_path / "missing" / "m.pt")])
    assert res.exit_code == 2 and "does not exist" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_digits_split_is_fixed_and_balanced():
    train, test = load_digits()
    assert (tuple(train.x.shape), tuple(test.x.shape)) == ((1438, 3, 32, 32), (359, 3, 32, 32))
    again, _ = load_digits()
    assert torch.equal(train.y, again.y)
    counts = torch.bincount(test.y, minlength=10)
    assert counts.min() >= 25  # every digit is represented in the held-out split


def test_train_then_export_reports_equal_held_out_accuracy(tmp_path):
    ckpt = tmp_path / "digits.pt"
    res = runner.invoke(app, ["zoo", "train", "resnet20", "--conv", "doconv", "--epochs", "2", "-o", str(ckpt)])
    assert res.exit_code == 0, res.output
    meta = load_checkpoint(ckpt).meta
    assert meta["dataset"] == "digits" and meta["test_accuracy"] > 0.8  # chance is 0.1
    res = runner.invoke(app, ["export", str(ckpt), "--samples", "2", "--exporter", "torchscript"])
    assert res.exit_code == 0, res.output
    acc = json.loads((tmp_path / "digits.report.json").read_text())["accuracy"]
    assert acc["images"] == 359
    assert acc["training_form"] == acc["folded"] == acc["onnxruntime"] == meta["test_accuracy"]
    assert "held-out accuracy" in res.stdout
