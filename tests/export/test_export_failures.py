"""What the exporters cannot take is exit 2 with a line naming the module and what to do, never exit 1
and never the exporter's page of advice: data-dependent control flow, an operator ONNX has no
conversion for, an input that is not one image tensor (exporters/failures.py, deploy/pipeline/shapes.py)."""

from __future__ import annotations

import pytest
import torch

import deploy
from deploy.core.errors import BadInputError
from tests import usermodels

SHAPE = (3, 12, 10)


def _export(model, tmp_path, **options):
    torch.manual_seed(0)
    return deploy.export(model.eval(), input_shape=SHAPE, output=tmp_path / "m.onnx", samples=1, **options)


@pytest.mark.parametrize("make, expected", [
    (usermodels.data_dependent, ["data-dependent control flow in `1` (BranchOnMean), usermodels.py:",
                                 ": `if x.mean() > 0:`", "select with torch.where"]),
    (usermodels.unconvertible, ["the dynamo exporter cannot convert aten._linalg_eigh in `2` (EigenHead)",
                                "No ONNX function found", "move it out of the exported model"]),
    (usermodels.DictInput, ["forward (DictInput) reads its input as a dict (keys 'image', 'scale'), not one image "
                            "tensor", "wrap the model in a module whose forward takes the image"]),
    (usermodels.ListInput, ["forward (ListInput) reads its input as a list of tensors, not one image tensor"]),
])
def test_what_the_exporter_cannot_take_is_named(make, expected, tmp_path) -> None:
    with pytest.raises(BadInputError) as info:
        _export(make(), tmp_path)
    message = str(info.value)
    assert info.value.exit_code == 2 and all(e in message for e in expected), message
    assert "\n" not in message and "\x1b[" not in message and "step 1/3" not in message
    assert not list(tmp_path.iterdir())


def test_the_torchscript_exporter_names_the_operator(tmp_path) -> None:
    with pytest.raises(BadInputError, match=r"the torchscript exporter cannot convert aten::linalg_eigvalsh in "
                                            r"the model \(") as info:
        _export(usermodels.unconvertible(), tmp_path, exporter="torchscript")
    assert info.value.exit_code == 2


@pytest.mark.parametrize("make, expected", [
    (usermodels.data_dependent, "data-dependent control flow in `1` (BranchOnMean)"),
    (usermodels.DictInput, "reads its input as a dict (keys 'image', 'scale')"),
])
def test_the_cli_prints_one_line_and_exits_2(make, expected, deploy_cli, tmp_path) -> None:
    torch.save(make().eval(), tmp_path / "m.pt")
    run = deploy_cli("export", tmp_path / "m.pt", "--trust-pickle", "--input-size", "12x10", "--samples", 1)
    assert run.exit_code == 2 and expected in run.one_error_line(), run.stderr
