"""deploy triton: the config.pbtxt written for an .onnx and (from engine.plan.json, without TensorRT) a .plan,
parsed with Triton's own ModelConfig schema and checked field by field against the artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.core.atomic import json_bytes, sha256_file
from deploy.serving.artifact import read_artifact
from deploy.serving.repository import TritonOptions, plan_repository
from deploy.serving.triton_releases import TRITON_TENSORRT, triton_releases
from exporters.tensorrt.build import engine_metadata, onnx_io
from exporters.tensorrt.options import BuildOptions
from tests.triton_env import parse_configs, requires_triton_env
from validators.onnx_file import onnx_input
from validators.runtimes.tensorrt_env import BatchProfile, metadata_path

ENV = {"tensorrt_version": "10.3.0.26", "gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}


def tiny_onnx(path: Path, batch: int | str = "batch", hw: tuple[int | str, int | str] = (8, 8),
              shape_meta: str | None = None) -> Path:
    """A small real ONNX classifier: Conv, ReLU, global pool, MatMul -> logits [batch, 5]."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "g")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "g"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, *hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if shape_meta:
        model.metadata_props.add(key="convdeploy.input_shape", value=shape_meta)
    onnx.save(model, path)
    return path


def hand_made_engine(tmp: Path, onnx_path: Path, name: str = "engine.plan", max_batch: int = 16,
                     env: dict | None = None, with_io: bool = True) -> Path:
    """engine.plan (bytes Triton would load; no TensorRT here) and the engine.plan.json record convdeploy
    writes beside it (`engine_metadata`, as `deploy build` calls it)."""
    engine = tmp / name
    engine.write_bytes(b"serialized engine bytes")
    opts = BuildOptions(onnx_path, engine, fp16=True, max_batch=max_batch)
    inp = onnx_input(onnx_path)
    profile = BatchProfile(inp.name, (1, 3, 8, 8), (max_batch, 3, 8, 8), (max_batch, 3, 8, 8))
    meta = engine_metadata(opts, profile, env or ENV, sha256_file(onnx_path), sha256_file(engine), ["logits"], 2.0,
                           io=onnx_io(onnx_path) if with_io else None)
    metadata_path(engine).write_bytes(json_bytes(meta))
    return engine


def config_of(repo: Path, name: str) -> str:
    return (repo / name / "config.pbtxt").read_text()


def test_onnx_dynamic_batch_config_matches_the_artifact(tmp_path, deploy_cli):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    repo = tmp_path / "repo"
    repo.mkdir()
    run = deploy_cli("triton", model, "-o", repo, "--kind", "cpu", "--max-batch", "6", "--preferred-batch", "2",
                     "--preferred-batch", "4", "--queue-delay-us", "250", "--instances", "2", "--json")
    assert run.exit_code == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["max_batch_size"] == 6 and record["platform"] == "onnxruntime_onnx"
    assert (repo / "tiny" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    art = read_artifact(model)
    assert art.inputs[0].shape == (None, 3, 8, 8) and art.outputs[0].shape == (None, 5)
    text = config_of(repo, "tiny")
    assert record["config"] == text


@requires_triton_env
def test_configs_parse_with_tritons_schema_field_by_field(tmp_path, deploy_cli):
    """Every field we write, read back through Triton's ModelConfig message (unknown fields would not parse)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    onnx_path = tiny_onnx(tmp_path / "tiny.onnx")
    assert deploy_cli("triton", onnx_path, "-o", repo, "--max-batch", "6", "--preferred-batch", "2",
                      "--preferred-batch", "4", "--queue-delay-us", "250", "--instances", "2", "--ort-trt",
                      "fp16").exit_code == 0
    fixed = tiny_onnx(tmp_path / "fixed.onnx", batch=2)
    assert deploy_cli("triton", fixed, "-o", repo, "--kind", "cpu").exit_code == 0
    engine = hand_made_engine(tmp_path, onnx_path)
    assert deploy_cli("triton", engine, "-o", repo, "--name", "trt").exit_code == 0
    typo = tmp_path / "typo.pbtxt"
    typo.write_text(config_of(repo, "tiny").replace("max_batch_size", "max_batch"))
    dyn, fix, trt, bad = parse_configs(repo / "tiny" / "config.pbtxt", repo / "fixed" / "config.pbtxt",
                                       repo / "trt" / "config.pbtxt", typo)
    assert 'has no field named "max_batch"' in bad  # the schema has teeth: a misspelled field does not parse
    assert dyn["name"] == "tiny" and dyn["platform"] == "onnxruntime_onnx" and dyn["max_batch_size"] == 6
    assert dyn["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["3", "8", "8"]}]
    assert dyn["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["5"]}]
    assert dyn["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]
    assert dyn["dynamic_batching"] == {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": "250"}
    assert dyn["model_warmup"] == [{"name": "random sample", "batch_size": 1, "inputs": {
        "x": {"data_type": "TYPE_FP32", "dims": ["3", "8", "8"], "random_data": True}}}]
    accel = dyn["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    assert accel == [{"name": "tensorrt", "parameters": {"precision_mode": "FP16"}}]
    # a fixed batch: max_batch_size 0, the full dims, no batcher, a warm-up of the whole shape
    assert fix.get("max_batch_size", 0) == 0 and "dynamic_batching" not in fix  # protobuf leaves out zeros
    assert fix["input"][0]["dims"] == ["2", "3", "8", "8"] and fix["output"][0]["dims"] == ["2", "5"]
    assert fix["model_warmup"][0]["inputs"]["x"]["dims"] == ["2", "3", "8", "8"]
    # the engine: tensorrt_plan, max_batch_size from its profile, interface from its record
    assert trt["platform"] == "tensorrt_plan" and trt["max_batch_size"] == 16
    assert trt["input"] == dyn["input"] and trt["output"] == dyn["output"]
    assert trt["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]


def test_engine_config_names_tensorrt_version_and_triton_release(tmp_path, deploy_cli):
    engine = hand_made_engine(tmp_path, tiny_onnx(tmp_path / "tiny.onnx"))
    repo = tmp_path / "repo"
    repo.mkdir()
    run = deploy_cli("triton", engine, "-o", repo, "--json")
    assert run.exit_code == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["tensorrt_version"] == "10.3.0.26" and record["compute_capability"] == "8.0"
    assert record["triton_releases"] == ["24.08"]
    text = config_of(repo, "engine")
    assert "# written by convdeploy from engine.plan: TensorRT 10.3.0.26, compute capability 8.0" in text
    assert "Triton 24.08" in text and (repo / "engine" / "1" / "model.plan").read_bytes() == engine.read_bytes()


def test_release_table_lookup():
    assert triton_releases("10.8.0.43") == ("25.01", "25.02")
    assert triton_releases("10.7.0.23") == ("24.12",)  # the matrix prints 10.7.0
    assert triton_releases("10.0.1.6") == ("24.05", "24.06")  # 10.0.1.6 exactly, and the 10.0.1 row
    assert triton_releases("10.70.0.1") == () and triton_releases("9.3.0") == ()
    assert all(r[:2].isdigit() and r[2] == "." for _, releases in TRITON_TENSORRT for r in releases)


def test_several_engines_become_cc_model_filenames(tmp_path, deploy_cli):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    a100 = hand_made_engine(tmp_path, model, "a100.plan")
    h100 = hand_made_engine(tmp_path, model, "h100.plan", env={**ENV, "compute_capability": "9.0", "gpu_name": "H100"})
    repo = tmp_path / "repo"
    repo.mkdir()
    assert deploy_cli("triton", a100, h100, "-o", repo, "--name", "m").exit_code == 0
    text = config_of(repo, "m")
    assert 'cc_model_filenames { key: "8.0" value: "model_sm80.plan" }' in text
    assert 'cc_model_filenames { key: "9.0" value: "model_sm90.plan" }' in text
    assert sorted(p.name for p in (repo / "m" / "1").iterdir()) == ["model_sm80.plan", "model_sm90.plan"]
    other = hand_made_engine(tmp_path, model, "other.plan", env={**ENV, "tensorrt_version": "10.8.0.43",
                                                                 "compute_capability": "8.6"})
    run = deploy_cli("triton", a100, other, "-o", repo, "--name", "mixed")
    assert run.exit_code == 2 and "one Triton container runs one TensorRT" in run.one_error_line()
    assert not (repo / "mixed").exists()


def test_engine_record_without_io_reads_the_source_onnx_while_it_matches(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    engine = hand_made_engine(tmp_path, model, with_io=False)
    assert read_artifact(engine).inputs == read_artifact(model).inputs
    tiny_onnx(model, hw=(16, 16))  # the source changed since the build
    from deploy.core.errors import BadInputError

    with pytest.raises(BadInputError, match="gone or changed"):
        read_artifact(engine)


def test_dynamic_hw_uses_recorded_shape_for_warmup(tmp_path):
    bare = read_artifact(tiny_onnx(tmp_path / "a.onnx", hw=("h", "w")))
    plan = plan_repository([bare], TritonOptions(name="a"))
    assert plan.config.inputs[0].dims == (3, -1, -1) and plan.config.warmup is None and plan.notes
    meta = read_artifact(tiny_onnx(tmp_path / "b.onnx", hw=("h", "w"), shape_meta="3x24x20"))
    warm = plan_repository([meta], TritonOptions(name="b")).config.warmup
    assert warm is not None and warm.inputs[0].dims == (3, 24, 20)


@pytest.mark.parametrize("args, message", [
    (("--max-batch", "32"), "give 1 to 16"),  # above the engine's profile
    (("--kind", "cpu"), "runs on a GPU only"),
    (("--preferred-batch", "17"), "outside 1..16"),
    (("--ort-trt", "fp16"), "ONNX Runtime only"),
    (("--name", "a/b"), "--name"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, deploy_cli, args, message):
    engine = hand_made_engine(tmp_path, tiny_onnx(tmp_path / "tiny.onnx"))
    repo = tmp_path / "repo"
    repo.mkdir()
    run = deploy_cli("triton", engine, "-o", repo, *args)
    assert run.exit_code == 2 and message in run.one_error_line()
    assert list(repo.iterdir()) == []


def test_fixed_batch_refuses_max_batch(tmp_path, deploy_cli):
    repo = tmp_path / "repo"
    repo.mkdir()
    run = deploy_cli("triton", tiny_onnx(tmp_path / "f.onnx", batch=1), "-o", repo, "--max-batch", "4")
    assert run.exit_code == 2 and "fixed batch axis" in run.one_error_line()


def test_interrupted_write_leaves_no_model_directory(tmp_path, deploy_cli, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setenv("CONVDEPLOY_TEST_HOOK", "staged:int")
    run = deploy_cli("triton", tiny_onnx(tmp_path / "tiny.onnx"), "-o", repo)
    assert run.exit_code == 130
    assert list(repo.iterdir()) == []


def test_artifact_inside_the_repository_it_would_overwrite_is_refused(tmp_path, deploy_cli):
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)
    model = tiny_onnx(repo / "tiny" / "1" / "model.onnx")
    before = model.read_bytes()
    run = deploy_cli("triton", model, "-o", repo, "--name", "tiny")
    assert run.exit_code == 2 and "--output file tiny/1/model.onnx" in run.one_error_line()
    assert model.read_bytes() == before and not (repo / "tiny" / "config.pbtxt").exists()
