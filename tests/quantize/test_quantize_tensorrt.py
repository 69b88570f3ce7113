"""The INT8 Q/DQ ONNX builds into a TensorRT engine (strongly typed on 10 and 11, no precision flag) that
predicts what ONNX Runtime predicts from the same file; a Q/DQ model asked for fp16 is refused. Needs a GPU
and TensorRT: the CPU parts (routes, polygraphy keywords) are in tests/tensorrt/test_engine_build.py and
tests/tensorrt/test_tensorrt_api.py."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_int8_engine_agrees_with_onnxruntime_on_the_digits(trained, digits_train_pngs, deploy_cli, tmp_path) -> None:
    from deploy.data.datasets import batches, open_data
    from deploy.data.preprocess import Recipe
    from validators.runtimes.onnxruntime import OrtRuntime
    from validators.runtimes.tensorrt import TensorRTRuntime

    _, onnx_path, test_pngs, _ = trained
    int8, engine = tmp_path / "m.int8.onnx", tmp_path / "m.int8.plan"
    run = deploy_cli("quantize", onnx_path, "--calib", digits_train_pngs, "--eval", test_pngs, "-o", int8,
                     "--calib-limit", 300)
    assert run.exit_code == 0, run.stdout + run.stderr
    run = deploy_cli("build", int8, "-o", engine, "--max-batch", 32)
    assert run.exit_code == 0, run.stdout + run.stderr
    meta = json.loads((tmp_path / "m.int8.plan.json").read_text())
    assert meta["precision"] == "int8" and meta["precision_route"] == "int8 (explicit Q/DQ, strongly typed)"
    recipe = Recipe.from_dict(json.loads((tmp_path / "m.int8.report.json").read_text())["recipe"])
    ort_rt, trt_rt = OrtRuntime(str(int8)), TensorRTRuntime(engine)
    same = total = 0
    for b in batches(open_data(test_pngs), recipe, 32):
        same += int((np.argmax(ort_rt.run(b.x), 1) == np.argmax(trt_rt.run(b.x), 1)).sum())
        total += len(b.x)
    assert same >= 0.99 * total, (same, total)
    assert deploy_cli("build", int8, "-o", tmp_path / "x.plan", "--fp16").exit_code == 2
