"""Input shapes: non-square inputs (``--input-size HxW``, ``--input-shape CxHxW``) and dynamic H/W
(``--dynamic hw``), with parity run at twice H and W as well, recorded in the report and the ONNX metadata."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from torch import nn

from deploy import export
from deploy.core.errors import BadInputError, ParityError
from tests.conftest import E2E_SAMPLES


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_non_square_dynamic_hw_export_and_validate(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    ckpt = zoo_checkpoint("resnet20", "plain", 32)
    out = tmp_path / "r20.onnx"
    run = deploy_cli("export", ckpt, "--input-size", "64x48", "--dynamic", "batch,hw", "-o", out,
                     "--samples", E2E_SAMPLES)
    assert run.exit_code == 0, run.stderr
    proto = onnx.load(str(out))
    assert _dims(proto.graph.input[0]) == ["batch", 3, "height", "width"] and _dims(proto.graph.output[0]) == ["batch", 10]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["convdeploy.input_shape"] == "3x64x48" and meta["convdeploy.dynamic_axes"] == "batch,height,width"
    rep = json.loads((tmp_path / "r20.report.json").read_text())
    assert rep["options"]["input_shape"] == [3, 64, 48] and rep["options"]["dynamic_axes"] == ["batch", "height", "width"]
    assert rep["options"]["parity_input_shapes"] == [[3, 64, 48], [3, 128, 96]]
    parity = rep["parity"]
    assert parity["passed"] and parity["input_shape"] == [3, 64, 48] and parity["extra_input_shapes"] == [[3, 128, 96]]
    for cand in parity["candidates"]:  # batch 1 and 3 at 64x48, then batch 1 at 128x96
        assert cand["runs"] == 3 * E2E_SAMPLES and cand["max_rel_err"] < 1e-4 and cand["top1_agreement"] == 1.0
    assert "64x48 + 3x128x96 at batch 1" in " ".join(run.stdout.split())

    check = deploy_cli("validate", ckpt, out, "--input-size", "64x48", "--samples", 1)
    assert check.exit_code == 0, check.stderr
    assert "+ 3x128x96" in " ".join(check.stdout.split())


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BakesItsWidth(Plain):
    """A forward that reads W as a Python int: a traced graph keeps the traced width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.arange(int(x.shape[-1]), dtype=x.dtype)


def test_hw_only_and_input_shape(tmp_path) -> None:
    torch.manual_seed(0)
    result = export(Plain().eval(), input_shape="3x24x40", output=tmp_path / "m.onnx", dynamic="hw", samples=1)
    proto = onnx.load(str(result.onnx_path))
    assert _dims(proto.graph.input[0]) == [1, 3, "height", "width"]
    assert _dims(proto.graph.output[0]) == [1, 4, "height", "width"]
    assert result.parity.batches == (1,) and result.parity.extra_input_shapes == ((3, 48, 80),) and result.parity.passed
    out = result.parity.candidates[-1].output("output")
    assert out.shape == (1, 4, 24, 40) and not out.class_scores and out.top1_agreement is None


def test_a_graph_that_does_not_generalise_fails_at_the_second_size(tmp_path) -> None:
    torch.manual_seed(0)
    with pytest.raises(ParityError) as info:
        export(BakesItsWidth().eval(), input_shape=(3, 16, 24), output=tmp_path / "m.onnx", dynamic="batch,hw",
               exporter="torchscript", samples=1)
    assert info.value.exit_code == 3 and "at batch 1 (3x32x48) (its H/W are not really dynamic" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("options, message", [
    ({"input_size": "64x"}, "`input_size` must be H or HxW"),
    ({"input_shape": "3x64"}, "`input_shape` must be CxHxW"),
    ({"input_shape": "3x64x48", "input_size": 32}, "not both"),
    ({"input_shape": "3x64x48", "dynamic": "depth"}, "`dynamic` must be batch, hw, batch,hw or none"),
    ({"input_shape": "3x64x48", "dynamic": "batch", "batch": "4"}, "`batch` 4 fixes the batch axis"),
])
def test_bad_shapes_are_one_clear_error(options: dict, message: str, tmp_path) -> None:
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")) as info:
        export(Plain().eval(), output=tmp_path / "m.onnx", **options)
    assert info.value.exit_code == 2 and not (tmp_path / "m.onnx").exists()
