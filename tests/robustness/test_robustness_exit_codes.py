"""Every user mistake exits 2 with one line (NaN/inf refused while parsing and in the library,
sizes and batches bounded, opsets honoured or refused per exporter); parity failures exit 3
naming the layer for fixed-batch graphs too; the messages say what the file is."""

from __future__ import annotations

import collections
import json
import math
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from deploy.claims.settings import ClaimsSettings
from deploy.core.errors import BadInputError
from deploy.core.limits import MAX_INPUT_ELEMENTS, MAX_SIDE
from deploy.pipeline.steps import tolerance_from

FAST = ["--exporter", "torchscript", "--no-simplify", "--samples", "1", "--no-rewrite-diff"]


@pytest.fixture()
def files(model_files):
    """m.pt and m.onnx (see ``model_files``)."""
    return model_files


MISTAKES = {
    "validate-at-another-input-size": (["validate", "m.pt", "m.onnx", "--input-size", "64"],
                                       "was exported for 3x32x32 inputs"),
    "validate-negative-seed": (["validate", "m.pt", "m.onnx", "--seed", "-1"], "--seed must be an integer in [0,"),
    "export-negative-seed": (["export", "m.pt", "-o", "o.onnx", "--seed", "-1"], "--seed must be an integer"),
    "bench-negative-seed": (["bench", "m.onnx", "--seed", "-1"], "--seed must be an integer"),
    "export-huge-batch": (["export", "m.pt", "-o", "o.onnx", "--batch", "1000000000"], "choose a smaller --batch"),
    "export-huge-input-size": (["export", "m.pt", "-o", "o.onnx", "--input-size", "5000"],
                               f"larger than the {MAX_SIDE} pixels"),
    "export-huge-input-shape": (["export", "m.pt", "-o", "o.onnx", "--input-shape", "100000x4000x4000"],
                                "larger than the"),
    "bench-huge-batch": (["bench", "m.onnx", "--batch", "100000000"], "choose a smaller --batch"),
    "bench-huge-input-size": (["bench", "m.onnx", "--input-size", "100000"], "larger than the"),
    "torchscript-opset-5": (["export", "m.pt", "-o", "o.onnx", "--opset", "5", "--exporter", "torchscript"],
                            "--opset 5 is not one the torchscript exporter writes"),
    "dynamo-opset-5": (["export", "m.pt", "-o", "o.onnx", "--opset", "5"], "is not one the dynamo exporter writes"),
    "dynamo-opset-99": (["export", "m.pt", "-o", "o.onnx", "--opset", "99"], "choose 18..23"),
}


@pytest.mark.parametrize("case", MISTAKES, ids=list(MISTAKES))
def test_user_mistakes_exit_2_with_one_line(files, deploy_cli, monkeypatch, case):
    args, needle = MISTAKES[case]
    monkeypatch.chdir(files)
    before = sorted(os.listdir(files))
    run = deploy_cli(*args)
    assert run.exit_code == 2, run.stdout + run.stderr
    assert needle in run.one_error_line()
    assert sorted(os.listdir(files)) == before


NOT_FINITE = {
    "bench-duration-nan": ["bench", "m.onnx", "--duration", "nan"],
    "bench-duration-inf": ["bench", "m.onnx", "--duration", "inf"],
    "export-atol-nan": ["export", "m.pt", "-o", "o.onnx", "--atol", "nan"],
    "export-rtol-inf": ["export", "m.pt", "-o", "o.onnx", "--rtol", "inf"],
    "validate-rtol-inf": ["validate", "m.pt", "m.onnx", "--rtol", "inf"],
    "validate-atol-minus-inf": ["validate", "m.pt", "m.onnx", "--atol", "-inf"],
    "claims-duration-nan": ["claims", "--duration", "nan"],
    "build-workspace-inf": ["build", "m.onnx", "-o", "e.plan", "--workspace", "inf"],
    "export-ratio-nan": ["export", "m.pt", "-o", "o.onnx", "--conv", "sp", "--ratio", "nan"],
}


@pytest.mark.parametrize("case", NOT_FINITE, ids=list(NOT_FINITE))
def test_nan_and_inf_options_are_refused_while_parsing(files, deploy_cli, monkeypatch, case):
    monkeypatch.chdir(files)
    run = deploy_cli(*NOT_FINITE[case])
    assert run.exit_code == 2, run.stdout + run.stderr
    assert "is not a finite number" in run.one_error_line()  # one `error:` line, not a usage box
    assert sorted(os.listdir(files)) == ["m.onnx", "m.pt"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_the_library_refuses_them_too(value):
    with pytest.raises(BadInputError, match="`atol` must be"):
        tolerance_from(value, None)
    with pytest.raises(BadInputError, match="`rtol` must be"):
        tolerance_from(None, value)
    with pytest.raises(BadInputError, match="`duration` must be"):
        ClaimsSettings(duration=value).check()


def test_the_library_bounds_seeds_and_elements():
    from deploy.core.limits import check_input_elements, check_seed

    for bad in (-1, 2**32, True, 1.5):
        with pytest.raises(BadInputError, match="`seed` must be an integer"):
            check_seed(bad)  # type: ignore[arg-type]
    check_seed(0)
    check_seed(2**32 - 1)
    check_input_elements((1, MAX_INPUT_ELEMENTS))
    with pytest.raises(BadInputError, match="choose a smaller `batch`"):
        check_input_elements((2, MAX_INPUT_ELEMENTS // 2 + 1))


def test_an_asked_opset_is_honoured_and_the_report_reads_it_back(files, deploy_cli):
    run = deploy_cli("export", files / "m.pt", "-o", files / "o.onnx", "--opset", "20", "--samples", "1",
                     "--no-rewrite-diff")
    assert run.exit_code == 0, run.stderr
    written = [o.version for o in onnx.load(str(files / "o.onnx")).opset_import if o.domain in ("", "ai.onnx")]
    report = json.loads((files / "o.report.json").read_text())
    assert written == [20] and report["options"]["opset"] == 20


def test_parity_failure_on_a_fixed_batch_graph_exits_3_naming_the_layer(files, deploy_cli):
    run = deploy_cli("export", files / "m.pt", "-o", files / "fixed.onnx", "--batch", "2", *FAST)
    assert run.exit_code == 0, run.stderr
    proto = onnx.load(str(files / "fixed.onnx"))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    weight = next(i for i in proto.graph.initializer if len(i.dims) == 4)
    array = numpy_helper.to_array(weight).copy()
    array[0, 0, 0, 0] += 1.0
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(proto, str(files / "bad.onnx"))
    run = deploy_cli("validate", files / "m.pt", files / "bad.onnx", "--samples", "1")
    assert run.exit_code == 3, run.stdout + run.stderr
    line = run.one_error_line()
    assert "at batch 2" in line and "first diverging layer: conv1" in line


# ---------------------------------------------------------------- messages


class _Object:
    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize("payload", [{"f": os.getcwd}, {"o": _Object()}, {"c": collections.Counter(a=1)},
                                     torch.nn.Linear(2, 2)], ids=["function", "object", "counter", "module"])
def test_a_pickle_with_blocked_globals_says_it_needs_trust_pickle(tmp_path, deploy_cli, payload):
    path = tmp_path / "p.pt"
    torch.save(payload, path)
    run = deploy_cli("export", path, "-o", tmp_path / "o.onnx")
    assert run.exit_code == 2, run.stderr
    line = run.one_error_line()
    if isinstance(payload, dict) and "c" in payload:  # an allowed global: read, but not a model
        assert "not a state_dict" in line
    else:
        assert "holds pickled Python objects" in line and "--trust-pickle" in line


def test_a_text_file_is_not_a_checkpoint(tmp_path, deploy_cli):
    path = tmp_path / "notes.pt"
    path.write_text("hello, this is text\n")
    line = deploy_cli("export", path, "-o", tmp_path / "o.onnx").one_error_line()
    assert "is not a PyTorch checkpoint" in line and "b'hell'" in line and "truncated" not in line


@pytest.mark.parametrize("field, value, needle", [
    ("meta", 5, "'meta' field holds a int where a dict belongs"),
    ("num_classes", True, "'num_classes' field holds a bool where a int belongs"),
    ("conv_kwargs", [1], "'conv_kwargs' field holds a list where a dict belongs"),
    ("state_dict", {"conv1.weight": 5}, "'state_dict' entry 'conv1.weight' is not a named tensor"),
])
def test_a_malformed_checkpoint_field_is_named(files, deploy_cli, field, value, needle):
    ckpt = torch.load(files / "m.pt", weights_only=True)
    ckpt[field] = value
    torch.save(ckpt, files / "bad.pt")
    run = deploy_cli("export", files / "bad.pt", "-o", files / "o.onnx")
    assert run.exit_code == 2, run.stderr
    line = run.one_error_line()
    assert needle in line and "malformed" in line and "not iterable" not in line


def test_onnx_runtime_logs_nothing_beside_our_line(files, deploy_cli, capfd):
    """A graph ONNX Runtime loads but cannot run (a conv weight with one channel too many): its
    own coloured ERROR lines (written by C++ to file descriptor 2, hence ``capfd``) used to
    print before ours."""
    proto = onnx.load(str(files / "m.onnx"))
    weight = next(i for i in proto.graph.initializer if len(i.dims) == 4)
    shape = list(weight.dims)
    shape[1] += 1
    weight.CopyFrom(numpy_helper.from_array(np.zeros(shape, np.float32), weight.name))
    onnx.save(proto, str(files / "wide.onnx"))
    for args in (["validate", files / "m.pt", files / "wide.onnx", "--samples", "1"],
                 ["bench", files / "wide.onnx", "--iters", "3"]):
        capfd.readouterr()
        run = deploy_cli(*args)
        assert run.exit_code in (2, 3), run.stderr
        native = capfd.readouterr().err
        assert "onnxruntime" not in native and "onnxruntime:" not in run.stderr, native
        run.one_error_line()
