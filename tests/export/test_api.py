"""The Python API (deploy/api.py): docs/python-api.md's example runs as written, and export raises what the CLI maps."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from deploy import ExportResult, export
from deploy.core.errors import BadInputError, ParityError

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def readme_example() -> str:
    """The ```python block right after the ``<!-- api-example -->`` marker in docs/python-api.md."""
    text = API_DOC.read_text()
    match = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/python-api.md has no <!-- api-example --> python block"
    return match.group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "docs/python-api.md", "exec"), {"__name__": "readme_example"})  # noqa: S102
    printed = out.getvalue()
    assert (tmp_path / "two_heads.onnx").is_file() and (tmp_path / "two_heads.report.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["two_heads.onnx", "two_heads.report.json"]
    rows = [line for line in printed.splitlines() if "max rel err" in line]
    assert len(rows) == 4 and all(line.endswith("passed True") for line in rows)  # 2 runtimes x 2 outputs
    assert {line.split()[1] for line in rows} == {"scores", "boxes"}
    assert "fold coverage: clean" in printed and re.search(r"^42 layers folded", printed, re.M)
    report = json.loads((tmp_path / "two_heads.report.json").read_text())
    assert report["input"]["source"] == "python" and report["options"]["dynamic_axes"] == ["batch", "height", "width"]
    assert report["parity"]["extra_input_shapes"] == [[3, 128, 96]]
    # every line the page shows as the example's output is one the example printed (numbers aside)
    shown = re.search(r"<!-- api-example-output -->\s*```\n(.*?)```", API_DOC.read_text(), re.S)
    assert shown, "docs/python-api.md shows no <!-- api-example-output --> block"
    pattern = re.compile(r"[-+]?\d[\d.e+-]*")
    assert [pattern.sub("#", s) for s in shown.group(1).splitlines()] == [pattern.sub("#", s) for s in printed.splitlines()]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def test_export_raises_what_the_cli_maps_and_writes_nothing(tmp_path) -> None:
    torch.manual_seed(0)
    with pytest.raises(BadInputError, match="training mode") as info:
        export(Net(), input_shape=(3, 8, 8), output=tmp_path / "m.onnx")
    assert info.value.exit_code == 2
    with pytest.raises(BadInputError, match="give the `output` path"):
        export(Net().eval(), input_shape=(3, 8, 8))
    with pytest.raises(BadInputError, match="does not record its input shape"):
        export(Net().eval(), output=tmp_path / "m.onnx")
    no_conv = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()  # an input size, but no conv to tell channels
    with pytest.raises(BadInputError, match=r"input channels cannot be told from it: give `input_shape` \(CxHxW\)"):
        export(no_conv, input_size=8, output=tmp_path / "m.onnx")
    with pytest.raises(ParityError) as parity:
        export(Net().eval(), input_shape=(3, 8, 8), output=tmp_path / "m.onnx", rtol=0.0, samples=1)
    assert parity.value.exit_code == 3 and "parity failed" in str(parity.value)
    with pytest.raises(BadInputError, match="no_such_option.*the options are"):
        export(Net().eval(), input_shape=(3, 8, 8), output=tmp_path / "m.onnx", no_such_option=1)
    assert list(tmp_path.iterdir()) == []


def test_input_channels_come_from_the_first_conv_the_forward_runs(tmp_path) -> None:
    class HeadFirst(nn.Module):  # the first conv registered takes 8 channels, the first one run takes 3
        def __init__(self) -> None:
            super().__init__()
            self.head, self.stem = nn.Conv2d(8, 4, 1), nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stem(x)).mean((2, 3))

    assert export(HeadFirst().eval(), input_size=8, output=tmp_path / "h.onnx", samples=1).parity.input_shape == (3, 8, 8)


def test_the_public_names() -> None:
    import deploy
    import deploy.models

    assert deploy.build_model is deploy.models.build_model and callable(deploy.fold_model)
    assert set(deploy.__all__) >= {"export", "fold_model", "build_model", "ExportResult", "__version__"}
    assert deploy.models.build_model("resnet20").arch == "resnet20"


def test_export_of_a_checkpoint_file(zoo_checkpoint, tmp_path) -> None:
    ckpt = zoo_checkpoint("resnet20", "plain", 32)
    steps: list[str] = []
    result = export(ckpt, output=tmp_path / "r20.onnx", samples=1, progress=lambda step, _: steps.append(step))
    assert isinstance(result, ExportResult) and result.parity.passed and result.fold is not None
    assert steps == ["load", "fold", "export", "simplify", "graph checks", "parity", "write"]
    assert set(result.seconds) == set(steps) and result.graph.op_histogram["Conv"] == 21
    assert json.loads(result.report_path.read_text())["input"]["source"] == "convdeploy"
