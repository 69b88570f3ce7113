"""`deploy matrix`: the CPU rows of a digits-sized model with parity and accuracy, a row failing its gate
(❎ with its reason, exit 3), rows this machine cannot run, and bad options.

A CIFAR ResNet-20 with seeded weights stands in for a trained digits model (training one costs minutes):
its accuracy on the digits is low, but every row is held to the same training form, so parity, equal
predictions and equal accuracy intervals are what is asserted. No time is asserted.
"""

from __future__ import annotations

import json

import pytest
import torch

ARGS = ("--data", "digits", "--limit", "96", "--duration", "0.2", "--warmup", "2", "--exporter", "torchscript",
        "--threads", "1", "--samples", "4")


@pytest.fixture(scope="module")
def digits_model(zoo_checkpoint):
    return zoo_checkpoint("resnet20", size=32)


def _rows(doc: dict) -> dict[str, dict]:
    return {r["spec"]["key"]: r for r in doc["rows"]}


def test_cpu_rows_with_parity_and_accuracy(digits_model, deploy_cli, tmp_path):
    out = tmp_path / "m"
    run = deploy_cli("matrix", digits_model, *ARGS, "--formats", "torch-folded,onnx,onnx-int8,trt-fp32",
                     "-o", out, "--json")
    assert run.exit_code == 0, run.stderr
    doc = json.loads(run.stdout)
    rows = _rows(doc)
    assert list(rows) == ["torch", "torch-folded", "onnx", "onnx-int8", "trt-fp32"]  # table order, reference first
    ref = rows["torch"]
    for key in ("torch", "torch-folded", "onnx"):
        r = rows[key]
        assert r["status"] == "passed" and r["reason"] == "", r
        p = r["parity"]
        assert p["max_abs_err"] <= p["bound"] and r["parity_passed"] is True
        assert (p["max_abs_err"] == 0.0) == (key == "torch")  # the reference against itself
        acc = r["accuracy"]
        assert acc["low"] <= acc["value"] <= acc["high"] and 0 < acc["high"] - acc["low"] < 0.3  # Wilson, 96 images
        assert acc == ref["accuracy"] and r["drop_points"] == 0.0  # the same predictions as the training form
        assert r["agreement"]["value"] == 1.0
        lat = r["latency"]
        assert lat["ci_low"] <= lat["ratio"] <= lat["ci_high"] and lat["pairs"] >= 3 and lat["batch"] == 1
        assert lat["median_ms"] <= lat["p99_ms"] and lat["images_per_s"] == pytest.approx(1e3 / lat["median_ms"])
    assert rows["onnx"]["artifact"].endswith("resnet20_plain_32_0.onnx") and rows["onnx"]["size_bytes"] > 1e6
    assert (rows["onnx-int8"]["status"], rows["onnx-int8"]["reason"]) == ("unavailable",
                                                                          "needs calibration images: give `calib`")
    if not torch.cuda.is_available():
        assert (rows["trt-fp32"]["status"], rows["trt-fp32"]["reason"]) == ("unavailable", "no GPU")
    assert doc["summary"]["passed"] == 3 and doc["input_shape"] == [3, 32, 32]
    assert "259 images" not in doc["data"] and "digits" in doc["data"]

    written = json.loads((out / "matrix.json").read_text())
    assert _rows(written) == rows and set(written["sha256"]) == {"matrix.md", "matrix.png"}
    md = (out / "matrix.md").read_text()
    assert "| ONNX Runtime fp32 | ✅ passed |" in md and "| TensorRT fp32 | ➖ unavailable" in md
    assert "(A/A)" in md  # the reference's own ratio is itself against itself
    assert (out / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_row_failing_its_gate_is_marked_and_exits_3(digits_model, deploy_cli, tmp_path):
    out = tmp_path / "m"
    run = deploy_cli("matrix", digits_model, *ARGS, "--formats", "torch-folded", "--rtol", "1e-12", "-o", out)
    assert run.exit_code == 3, run.stderr
    assert "torch-folded: parity: max abs error" in run.one_error_line()
    rows = _rows(json.loads((out / "matrix.json").read_text()))
    folded = rows["torch-folded"]
    assert folded["status"] == "failed its gate" and folded["parity_passed"] is False
    assert folded["latency"] is not None and folded["accuracy"] is not None  # measured, then gated
    assert rows["torch"]["status"] == "passed"  # the training form equals itself at any tolerance
    assert "| PyTorch eager (folded) | ❎ failed its gate: parity: max abs error" in (out / "matrix.md").read_text()


def test_int8_row_is_gated_on_its_accuracy_drop(digits_model, deploy_cli, tmp_path):
    out = tmp_path / "m"
    run = deploy_cli("matrix", digits_model, *ARGS, "--formats", "onnx-int8", "--calib", "digits:train",
                     "--max-drop", "0", "-o", out)
    int8 = _rows(json.loads((out / "matrix.json").read_text()))["onnx-int8"]
    assert int8["status"] in ("passed", "failed its gate"), int8
    dropped = int8["drop_points"] > 0
    assert (int8["status"] == "failed its gate") == dropped and run.exit_code == (3 if dropped else 0)
    if dropped:
        assert "| ONNX Runtime INT8 | ❎ failed its gate: top-1 accuracy" in (out / "matrix.md").read_text()


@pytest.mark.parametrize("args, needle", [
    (("--formats", "onnx,nope"), "unknown nope"),
    (("--max-drop", "-1"), "--max-drop"),
    (("--data", "no/such/folder"), "no such data"),
])
def test_bad_options_exit_2(digits_model, deploy_cli, args, needle):
    run = deploy_cli("matrix", digits_model, "--duration", "0.1", *args)
    assert run.exit_code == 2 and needle in run.one_error_line()
