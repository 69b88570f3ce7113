"""Model files other than convdeploy checkpoints (deploy/load/formats.py, deploy/load/checkpoint.py).

A torch.export ``.pt2`` exports (its input shape and static batch taken from the program);
a TorchScript archive is refused with exit 2 and what to do instead; a bare state_dict of
the user's own class loads strictly through ``--model-class`` (``--model-args`` JSON); a
pickled module whose class cannot be imported says which module to put on PYTHONPATH.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

from deploy.core.errors import BadInputError
from deploy.load.checkpoint import load_checkpoint
from tests.helpers import randomise_bn

SHAPE = (3, 16, 16)


class SmallNet(nn.Module):
    def __init__(self, classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def small_net(**kwargs) -> SmallNet:
    torch.manual_seed(0)
    return randomise_bn(SmallNet(**kwargs), torch.Generator().manual_seed(0))


def test_exported_program_pt2(deploy_cli, tmp_path) -> None:
    model, x = small_net(), torch.randn(2, *SHAPE)
    dynamic = tmp_path / "dynamic.pt2"
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), dynamic)
    run = deploy_cli("export", dynamic, "-o", tmp_path / "d.onnx", "--samples", 2)
    assert run.exit_code == 0, run.stderr
    rep = json.loads((tmp_path / "d.report.json").read_text())
    assert rep["input"]["source"] == "exported-program" and rep["input"]["input_shape"] == list(SHAPE)
    assert rep["parity"]["passed"] and rep["parity"]["batches"] == [1, 3]
    ort = rep["parity"]["candidates"][-1]
    assert ort["name"] == "onnxruntime-cpu" and ort["max_rel_err"] < 1e-5 and ort["top1_agreement"] == 1.0

    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (x,)), static)  # batch 2 baked into the program
    run = deploy_cli("export", static, "-o", tmp_path / "s.onnx", "--samples", 2)
    assert run.exit_code == 0, run.stderr
    rep = json.loads((tmp_path / "s.report.json").read_text())
    assert rep["options"]["batch"] == "2" and rep["parity"]["batches"] == [2] and rep["parity"]["passed"]
    asked = deploy_cli("export", static, "-o", tmp_path / "s2.onnx", "--dynamic", "batch")
    assert asked.exit_code == 2 and "static batch of 2: export it with --batch 2" in asked.one_error_line()

    training = tmp_path / "training.pt2"
    torch.export.save(torch.export.export(small_net().train(), (x,)), training)
    run = deploy_cli("export", training, "-o", tmp_path / "t.onnx")
    assert run.exit_code == 2 and "exported in training mode" in run.one_error_line()
    assert not (tmp_path / "t.onnx").exists()


def test_torchscript_is_refused_with_what_to_do(deploy_cli, tmp_path) -> None:
    model = small_net()
    traced, scripted = torch.jit.trace(model, torch.randn(1, *SHAPE)), torch.jit.script(model)
    for name, archive in (("traced.pt", traced), ("scripted.pt", scripted)):
        torch.jit.save(archive, tmp_path / name)
        run = deploy_cli("export", tmp_path / name, "-o", tmp_path / "m.onnx")
        assert run.exit_code == 2
        line = run.one_error_line()
        assert "is a TorchScript archive" in line and "--model-class" in line and ".pt2" in line
        assert "truncated or corrupt" not in line


def test_model_class_with_a_state_dict(deploy_cli, tmp_path) -> None:
    model = small_net(classes=6, width=12)
    ckpt = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    spec = "tests.load.test_formats:SmallNet"
    loaded = load_checkpoint(ckpt, model_class=spec, model_args={"classes": 6, "width": 12})
    assert loaded.source == "model-class" and not loaded.model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    run = deploy_cli("export", ckpt, "--model-class", spec, "--model-args", '{"classes": 6, "width": 12}',
                     "--input-size", "16", "-o", tmp_path / "m.onnx", "--samples", 2)
    assert run.exit_code == 0, run.stderr
    assert json.loads((tmp_path / "m.report.json").read_text())["parity"]["passed"]

    for args, expected in (
        (("--model-class", spec), "the weights do not fit tests.load.test_formats:SmallNet: shape mismatch for "
                                  "features.0.weight (checkpoint (12, 3, 3, 3) vs model (8, 3, 3, 3))"),
        (("--model-class", spec, "--model-args", "{classes: 6}"), "--model-args is not valid JSON"),
        (("--model-class", spec, "--model-args", '{"depth": 3}'), "unexpected keyword argument 'depth'"),
        (("--model-class", "tests.load.test_formats:Nope"), "tests.load.test_formats has no Nope"),
        (("--model-class", "no_such_package.net:Net"), "PYTHONPATH"),
        (("--model-class", "tests.load.test_formats"), "must be package.module:Class"),
        (("--model-class", spec, "--arch", "resnet20"), "not both"),
    ):
        run = deploy_cli("export", ckpt, *args, "--input-size", "16", "-o", tmp_path / "bad.onnx")
        assert run.exit_code == 2, (args, run.stderr)
        assert expected in run.one_error_line(), (args, run.stderr)
    assert not (tmp_path / "bad.onnx").exists()


def test_unimportable_pickled_class_says_what_to_put_on_pythonpath(deploy_cli, tmp_path, monkeypatch) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "mynet_for_pickle.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)

            def forward(self, x):
                return self.conv(x).mean((2, 3))
    """))
    monkeypatch.syspath_prepend(str(code))
    import mynet_for_pickle

    ckpt = tmp_path / "whole.pt"
    torch.save(mynet_for_pickle.Net().eval(), ckpt)
    monkeypatch.delitem(sys.modules, "mynet_for_pickle")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(code)])
    run = deploy_cli("export", ckpt, "--trust-pickle", "--input-size", "16", "-o", tmp_path / "m.onnx")
    assert run.exit_code == 2
    line = run.one_error_line()
    assert "No module named 'mynet_for_pickle'" in line and "PYTHONPATH" in line and "mynet_for_pickle" in line
    with pytest.raises(BadInputError, match="PYTHONPATH"):
        load_checkpoint(ckpt, trust_pickle=True)

    monkeypatch.syspath_prepend(str(code))  # what the hint says to do
    assert load_checkpoint(ckpt, trust_pickle=True).source == "pickle"
