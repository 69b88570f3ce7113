"""Every output of a model is exported, named and compared on its own (deploy/core/outputs.py, validators/parity.py).

A two-head model (class scores and a box map, returned as a tuple) and a dict-output model:
the ONNX graph's outputs carry the flattened torch names, parity reports each output with
its own metrics and bound, top-1 only for the class-score head; an ONNX file with only
the second head's weights multiplied by -3 fails `deploy validate` (exit 3) naming that
output and the layer that diverges.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deploy import export
from deploy.core.errors import BadInputError
from deploy.core.outputs import flatten_outputs
from tests.helpers import randomise_bn

SHAPE = (3, 16, 16)


class TwoHead(nn.Module):
    """A shared body, a classifier head and a 1x1 box head; ``as_dict`` returns {"scores", "boxes"}."""

    def __init__(self, classes: int = 5, as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.cls = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))
        self.box = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor):
        features = self.body(x)
        scores, boxes = self.cls(features), self.box(features)
        return {"scores": scores, "boxes": boxes} if self.as_dict else (scores, boxes)


def two_head(as_dict: bool) -> TwoHead:
    torch.manual_seed(0)
    return randomise_bn(TwoHead(as_dict=as_dict), torch.Generator().manual_seed(0))


def test_flattened_names() -> None:
    leaf = lambda v: isinstance(v, int)  # noqa: E731 - a stand-in for "is a tensor"
    assert [n for n, _ in flatten_outputs(1, leaf)] == ["output"]
    assert [n for n, _ in flatten_outputs((1, 2), leaf)] == ["output_0", "output_1"]
    assert [n for n, _ in flatten_outputs({"boxes": 1, "scores": [2, 3]}, leaf)] == ["boxes", "scores_0", "scores_1"]
    assert [n for n, _ in flatten_outputs(((1, 2), {"c": 3}), leaf)] == ["output_0_0", "output_0_1", "output_1_c"]
    with pytest.raises(BadInputError, match="output_1 is a NoneType, not a tensor"):
        flatten_outputs((1, None), leaf)
    with pytest.raises(BadInputError, match="both be named a_0"):
        flatten_outputs({"a_0": 1, "a": [2]}, leaf)


@pytest.mark.parametrize("as_dict, names", [(False, ["output_0", "output_1"]), (True, ["scores", "boxes"])])
def test_every_output_is_exported_and_compared_by_name(as_dict: bool, names: list[str], tmp_path) -> None:
    result = export(two_head(as_dict), input_shape=SHAPE, output=tmp_path / "m.onnx", samples=2)
    proto = onnx.load(str(result.onnx_path))
    assert [o.name for o in proto.graph.output] == names
    assert [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output] == [
        ["batch", 5], ["batch", 4, 16, 16]]
    by_output = result.parity_by_output()
    assert set(by_output) == {"folded-torch", "onnxruntime-cpu"}
    for outputs in by_output.values():
        assert list(outputs) == names
        scores, boxes = outputs[names[0]], outputs[names[1]]
        assert scores.class_scores and scores.top1_agreement == 1.0 and scores.shape == (1, 5)
        assert not boxes.class_scores and boxes.top1_agreement is None and boxes.shape == (1, 4, 16, 16)
        for o in (scores, boxes):
            assert o.passed and 0 < o.max_rel_err < 1e-5 and o.min_cosine > 0.99999 and o.bound > 0
        assert scores.bound != boxes.bound  # each output is judged against its own max|ref|
    report = json.loads(result.report_path.read_text())
    assert [o["name"] for o in report["parity"]["candidates"][1]["outputs"]] == names
    assert report["export"]["output_names"] == names


def test_second_head_perturbed_fails_validate_naming_the_output(deploy_cli, tmp_path) -> None:
    """Multiplying only the second head's ONNX weights by -3 must not pass (parity once compared the first output only)."""
    model = two_head(as_dict=True)
    ckpt = tmp_path / "weights.pt"
    torch.save(model.state_dict(), ckpt)
    load = ("--model-class", "tests.export.test_multi_output:TwoHead", "--model-args", '{"as_dict": true}',
            "--input-shape", "3x16x16")
    run = deploy_cli("export", ckpt, *load, "-o", tmp_path / "good.onnx", "--samples", 2)
    assert run.exit_code == 0, run.stderr
    assert "scores" in run.stdout and "boxes" in run.stdout  # the parity table has a row per output

    proto = onnx.load(str(tmp_path / "good.onnx"))
    box_conv = next(n for n in proto.graph.node if n.op_type == "Conv" and n.output[0] == "boxes")
    init = next(i for i in proto.graph.initializer if i.name == box_conv.input[1])
    init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * np.float32(-3), init.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))

    good = deploy_cli("validate", ckpt, tmp_path / "good.onnx", *load, "--samples", 2)
    assert good.exit_code == 0, good.stderr
    bad = deploy_cli("validate", ckpt, tmp_path / "bad.onnx", *load, "--samples", 2,
                     "--report", tmp_path / "bad.report.json")
    assert bad.exit_code == 3
    line = bad.one_error_line()
    assert "output 'boxes': max abs error" in line and "first diverging layer: box" in line and "scores" not in line
    rep = json.loads((tmp_path / "bad.report.json").read_text())
    ort = next(c for c in rep["parity"]["candidates"] if c["name"] == "onnxruntime-cpu")
    verdicts = {o["name"]: o["passed"] for o in ort["outputs"]}
    assert verdicts == {"scores": True, "boxes": False}
    assert next(o for o in ort["outputs"] if o["name"] == "boxes")["max_rel_err"] > 1.0
