"""ONNX Runtime's per-op profile (validators/profile.py) and `deploy bench MODEL.onnx --profile`.

The aggregation is checked against the graph it profiles (every node it ran, the op types
ONNX Runtime ran them as, the share adding up); no test reads a time as a verdict.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from tests.helpers import PORTABLE_IR
from validators.profile import profile_models, profile_onnx


def _tiny(path, channels: int = 16) -> onnx.ModelProto:
    """Conv -> Relu -> Sub(1) -> Conv: ONNX Runtime blocks the convs and reorders around the Sub."""
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3)).astype("float32"), "w1"),
             onnx.numpy_helper.from_array(rng.standard_normal((channels, channels, 1, 1)).astype("float32"), "w2"),
             onnx.numpy_helper.from_array(np.ones((1,), "float32"), "one")]
    nodes = [oh.make_node("Conv", ["input", "w1"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["a"], ["b"], name="relu"), oh.make_node("Sub", ["b", "one"], ["c"], name="minus_one"),
             oh.make_node("Conv", ["c", "w2"], ["output"], name="conv_b")]
    vi = lambda n: oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["batch", channels, 12, 12])  # noqa: E731
    model = oh.make_model(oh.make_graph(nodes, "tiny", [vi("input")], [vi("output")], inits),
                          opset_imports=[oh.make_opsetid("", 18)], ir_version=PORTABLE_IR)
    onnx.save(model, str(path))
    return model


def test_profile_aggregates_every_node_of_the_timed_runs(tmp_path):
    path = tmp_path / "tiny.onnx"
    _tiny(path)
    x = np.random.default_rng(1).standard_normal((2, 16, 12, 12)).astype(np.float32)
    prof = profile_onnx(path, x, threads=1, runs=4, warmup=2)
    assert prof.runs == 4 and prof.input_shape == (2, 16, 12, 12) and prof.model == "tiny.onnx"
    ops = {o.op for o in prof.by_op}
    assert "Sub" in ops and {"ReorderInput", "ReorderOutput"} & ops  # the layout change around the Sub
    assert all(o.calls == int(o.calls) for o in prof.by_op)  # whole calls per run: only timed runs counted
    assert sum(o.calls for o in prof.by_op) == len(prof.by_node)  # each node once per run
    assert sum(o.share for o in prof.by_op) == pytest.approx(1.0)
    assert sum(o.ms for o in prof.by_op) == pytest.approx(prof.kernel_ms)
    assert prof.by_op == sorted(prof.by_op, key=lambda o: -o.ms)
    assert 0 < prof.kernel_ms <= prof.run_ms
    doc = json.loads(json.dumps(prof.to_dict()))
    assert {n["name"] for n in doc["by_node"]} >= {"minus_one"} and doc["versions"]["onnxruntime"]
    assert not list(tmp_path.glob("*.json"))  # ONNX Runtime's raw trace went to a temporary folder


def test_two_models_take_turns(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    _tiny(a)
    _tiny(b, channels=16)
    x = np.zeros((1, 16, 12, 12), np.float32)
    pa, pb = profile_models([a, b], x, threads=1, runs=3, warmup=1)
    assert (pa.model, pb.model) == ("a.onnx", "b.onnx")
    assert {o.op for o in pa.by_op} == {o.op for o in pb.by_op}


def test_bench_profile_cli(tmp_path, deploy_cli):
    path = tmp_path / "tiny.onnx"
    _tiny(path)
    run = deploy_cli("bench", path, "--profile", "--threads", "1", "--iters", "3", "--top", "3", "--batch", "2")
    assert run.exit_code == 0, run.stderr
    out = tmp_path / "tiny.profile.json"
    assert f"wrote {out}" in run.stdout.replace("\n", "") and "by op type" in run.stdout
    doc = json.loads(out.read_text())
    assert doc["format"] == "convdeploy-profile/1" and doc["profiles"][0]["input_shape"] == [2, 16, 12, 12]
    assert doc["profiles"][0]["runs"] == 3 and doc["profiles"][0]["by_op"]
    # --vs profiles both, in turns, into the file --json names
    named = tmp_path / "both.json"
    run = deploy_cli("bench", path, "--vs", path, "--profile", "--iters", "2", "--json-file", named)
    assert run.exit_code == 0, run.stderr
    assert len(json.loads(named.read_text())["profiles"]) == 2 and "A−B" in run.stdout


@pytest.mark.parametrize("args,message", [
    (["--provider", "cuda"], "CPU profiler"),
    (["--top", "0"], "--top 0"),
    (["--vs", "engine.plan"], "time other artifacts without it"),
])
def test_bench_profile_bad_options(tmp_path, deploy_cli, args, message):
    path = tmp_path / "tiny.onnx"
    _tiny(path)
    (tmp_path / "engine.plan").write_bytes(b"not an engine")
    args = [tmp_path / a if a.endswith(".plan") else a for a in args]
    run = deploy_cli("bench", path, "--profile", *args)
    assert run.exit_code == 2 and message in run.one_error_line()
    assert not (tmp_path / "tiny.profile.json").exists()
