"""What a user's model does that convdeploy cannot handle is exit 2 with a line naming the real
problem, never exit 1 (a bug) and never a message that sends the user the wrong way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import deploy
from deploy.core.errors import BadInputError
from tests import usermodels
from tests.helpers import PORTABLE_IR

ROOT = Path(__file__).resolve().parents[2]


def _export_module(model, tmp_path, **options):
    torch.manual_seed(0)
    return deploy.export(model.eval(), output=tmp_path / "m.onnx", samples=1, **options)


@pytest.mark.parametrize("model,options,expected", [
    (usermodels.TwoInputs(), {"input_shape": (3, 16, 16)}, "forward takes 2 inputs (x, y)"),
    (usermodels.BatchStatistics(), {"input_shape": (3, 16, 16)}, "without running statistics (1: "),
    (usermodels.FlattenHead(), {"input_shape": (3, 16, 16), "dynamic": "batch,hw"},
     "parity also runs at 32x32, where the model fails"),
    (usermodels.HoldsLock(), {"input_shape": (3, 16, 16)}, "cannot be copied (TypeError"),
    (usermodels.EmptyOutput(), {"input_shape": (3, 16, 16)}, "output 'output' has no elements"),
    (usermodels.ThreeChannels(), {"input_shape": (4, 16, 16)}, "takes 3 input channels, not 4"),
    (usermodels.ThreeChannels().half(), {"input_shape": (3, 16, 16)}, "holds torch.float16 weights"),
    (usermodels.ThreeChannels().bfloat16(), {"input_shape": (3, 16, 16)}, "holds torch.bfloat16 weights"),
    (usermodels.ThreeChannels().double(), {"input_shape": (3, 16, 16)}, "holds torch.float64 weights"),
    (usermodels.Embedding(), {"input_shape": (3, 16, 16)}, "does not run on a float32 image tensor"),
])
def test_user_models_are_exit_2_with_the_real_problem(model, options, expected, tmp_path) -> None:
    with pytest.raises(BadInputError) as info:
        _export_module(model, tmp_path, **options)
    assert expected in str(info.value), str(info.value)
    assert "choose another `input_size`" not in str(info.value) or "input" in expected
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("options,expected", [
    ({"atol": "1e-3"}, "`atol` must be a int or float, got str"),
    ({"dynamic": ["batch"]}, "`dynamic` must be a str, got list"),
    ({"seed": 2.5}, "`seed` must be a int, got float"),
    ({"fold": "yes"}, "`fold` must be a bool, got str"),
    ({"input_shape": 32}, "`input_shape` must be CxHxW text or a (C, H, W) sequence"),
])
def test_api_argument_types_are_typed_errors(options, expected, tmp_path) -> None:
    options = {"input_shape": (3, 16, 16), **options}
    with pytest.raises(BadInputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        _export_module(usermodels.ThreeChannels(), tmp_path, **options)


def test_meta_device_module_is_a_typed_error(tmp_path) -> None:
    with torch.device("meta"):
        model = usermodels.ThreeChannels()
    with pytest.raises(BadInputError, match="meta device"):
        deploy.export(model.eval(), input_shape=(3, 16, 16), output=tmp_path / "m.onnx")


def test_model_class_that_exits_or_raises_at_import(deploy_cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save(usermodels.ThreeChannels().state_dict(), tmp_path / "sd.pt")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('no GPU here')\n")
    for module, expected in (("exits", "called sys.exit(0)"), ("raises", "failed (RuntimeError: no GPU here)")):
        run = deploy_cli("export", "sd.pt", "--model-class", f"{module}:Net", "--input-shape", "3x16x16", "-o", "o.onnx")
        assert run.exit_code == 2 and expected in run.one_error_line(), run.stderr
        sys.modules.pop(module, None)


def test_pt2_with_a_3d_input_a_narrow_range_or_zoo_options(deploy_cli, tmp_path) -> None:
    conv1d = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 3), torch.nn.Flatten()).eval()
    torch.export.save(torch.export.export(conv1d, (torch.randn(1, 3, 16),)), tmp_path / "d3.pt2")
    run = deploy_cli("export", tmp_path / "d3.pt2", "-o", tmp_path / "o.onnx")
    assert run.exit_code == 2 and "takes a 3-D input (1x3x16)" in run.one_error_line()
    model = usermodels.ThreeChannels().eval()
    h = torch.export.Dim("h", min=8, max=32)
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 16, 16),), dynamic_shapes=({2: h, 3: h},)),
                      tmp_path / "narrow.pt2")
    run = deploy_cli("export", tmp_path / "narrow.pt2", "--input-size", 64, "-o", tmp_path / "o.onnx")
    assert run.exit_code == 2 and "cannot take a 64x64 input (Guard failed" in run.one_error_line()
    run = deploy_cli("export", tmp_path / "narrow.pt2", "--input-size", 16, "--arch", "resnet20", "-o", tmp_path / "o.onnx")
    assert run.exit_code == 2 and "carries its own program: drop --arch" in run.one_error_line()
    run = deploy_cli("export", tmp_path / "narrow.pt2", "--input-size", 16, "--model-class",
                     "tests.usermodels:ThreeChannels", "-o", tmp_path / "o.onnx")
    assert run.exit_code == 2 and "carries its own program: drop --model-class" in run.one_error_line()
    run = deploy_cli("export", tmp_path / "narrow.pt2", "--input-size", 16, "-o", tmp_path / "o.onnx", "--samples", 1)
    assert run.exit_code == 0, run.stderr  # static batch 1: the fold's probe takes that batch too


def _onnx_with_external(tmp_path: Path, length: str) -> Path:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", length)):
        w.external_data.add(key=key, value=value)
    (tmp_path / "w.bin").write_bytes(np.ones(4 * 27, np.float32).tobytes()[:200])  # 200 of 432 bytes
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], initializer=[w])
    path = tmp_path / f"ext_{length}.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=PORTABLE_IR)
    path.write_bytes(model.SerializeToString())  # onnx.save would rewrite the external data
    return path


def test_inspect_checks_external_data_lengths_and_structure(deploy_cli, tmp_path) -> None:
    run = deploy_cli("inspect", _onnx_with_external(tmp_path, "abc"))
    assert run.exit_code == 2 and "external-data length of 'abc'" in run.one_error_line()
    run = deploy_cli("inspect", _onnx_with_external(tmp_path, "432"))  # the file holds 200 bytes
    assert run.exit_code == 2 and "without their data" in run.one_error_line()

    def graph(nodes, ir=PORTABLE_IR):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=ir)

    cases = {"cycle": (graph([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                              helper.make_node("Relu", ["a"], ["y"])]), "reads 'b' before anything produces it"),
             "self-loop": (graph([helper.make_node("Add", ["x", "y"], ["y"])]), "reads 'y' before"),
             "twice": (graph([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])]),
                       "'y' is produced twice"),
             "ir99": (graph([helper.make_node("Relu", ["x"], ["y"])], ir=99), "IR version 99 is newer")}
    for name, (model, expected) in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        run = deploy_cli("inspect", path)
        assert run.exit_code == 2 and expected in run.one_error_line(), (name, run.stdout, run.stderr)


def test_conv_option_held_by_the_weights_is_recorded(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    state = torch.load(zoo_checkpoint("resnet20", "ic"), weights_only=True)["state_dict"]
    torch.save(state, tmp_path / "ic_sd.pt")
    run = deploy_cli("export", tmp_path / "ic_sd.pt", "--arch", "resnet20", "--conv", "ic", "--conv-opt", "alpha=5",
                     "-o", tmp_path / "ic.onnx")
    assert run.exit_code == 2 and "the weights hold alpha=1" in run.one_error_line()
    from deploy.load.checkpoint import load_checkpoint

    loaded = load_checkpoint(tmp_path / "ic_sd.pt", arch="resnet20", conv="ic")
    assert loaded.conv_kwargs["alpha"] == 1.0


def test_messages_that_used_to_send_the_user_the_wrong_way(model_files, deploy_cli, tmp_path) -> None:
    torch.save(usermodels.ThreeChannels().eval(), tmp_path / "pickled.pt")
    run = deploy_cli("bench", tmp_path / "pickled.pt")
    line = run.one_error_line()
    assert run.exit_code == 2 and "deploy export" in line and "--trust-pickle" not in line and "--arch" not in line
    torch.save(usermodels.ThreeChannels().state_dict(), tmp_path / "bare.pt")  # needs --arch/--model-class to load
    run = deploy_cli("bench", tmp_path / "bare.pt")
    line = run.one_error_line()
    assert run.exit_code == 2 and "bare state_dict" in line and "deploy export" in line and "--arch" not in line
    os.mkfifo(tmp_path / "fifo.onnx")
    run = deploy_cli("validate", model_files / "m.pt", tmp_path / "fifo.onnx")
    assert run.exit_code == 2 and "not a regular file" in run.one_error_line()
    run = deploy_cli("bench", model_files / "m.onnx", "--profile", "--json-file", tmp_path / "missing" / "p.json")
    assert run.exit_code == 2 and " -o " not in run.one_error_line() and "another output path" in run.one_error_line()


def test_json_stdout_holds_only_json_when_a_module_writes_to_fd_1(tmp_path) -> None:
    (tmp_path / "noisy.py").write_text("import os\nos.write(1, b'hello from import\\n')\n"
                                       "from tests.usermodels import ThreeChannels as Net\n")
    torch.save(usermodels.ThreeChannels().state_dict(), tmp_path / "sd.pt")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    run = subprocess.run([sys.executable, "-m", "deploy.cli", "export", "sd.pt", "--model-class", "noisy:Net",
                          "--input-shape", "3x16x16", "-o", "o.onnx", "--samples", "1", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    import json

    assert json.loads(run.stdout)["tool"] == "convdeploy export"
    assert "hello from import" in run.stderr


def test_colon_words_in_names_are_not_emoji(model_files, deploy_cli) -> None:
    run = deploy_cli("export", model_files / "m.pt", "--model-class", "my_mod:smile:",
                     "-o", model_files / "x.onnx")
    assert run.exit_code == 2 and ":smile:" in run.one_error_line() and "😄" not in run.stderr
