"""`deploy claims --backend torch`: the claims matrix timed on PyTorch eager (CPU here, CUDA where marked).

Kept small: the baseline and SPConv α=1/4 only, at 32x32, batch 1, 0.3 s per comparison.
No time is asserted: the verdict may be anything a latency interval allows.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from deploy.cli import app

runner = CliRunner()


def _quick(out, *extra: str):
    args = ["claims", "--quick", "--backend", "torch", "--models", "sp-1/4", "--input-size", "32", "--batches", "1",
            "--duration", "0.3", "--warmup", "1", "--threads", "1", "-o", str(out), *extra]
    return runner.invoke(app, args)


def _check_doc(doc: dict, result, device: str) -> None:
    assert doc["summary"]["exit_code"] == result.exit_code in (0, 6), result.output
    refuted = [p for c in doc["claims"] if c["verdict"] == "refuted" for p in c["parts"] if p["status"] == "fail"]
    assert all(p["name"].startswith("latency") for p in refuted)  # only timing may refute here
    assert doc["backend"]["name"] == "pytorch" and f"eager on {device}" in doc["backend"]["text"]
    assert any("PyTorch runs each checkpoint" in n for n in doc["notes"])
    ((lat),) = doc["latency"]
    assert (lat["model"], lat["baseline"], lat["batch"]) == ("sp-1/4", "plain", 1)
    assert lat["a"]["clock"] == lat["b"]["clock"] == ("perf_counter" if device == "cpu" else "cuda_event")
    assert lat["ci_low"] <= lat["ratio"] <= lat["ci_high"] and len(lat["a"]["samples_ms"]) >= 3
    claim3 = next(c for c in doc["claims"] if c["claim"] == "3")
    assert "latency batch 1" in {p["name"] for p in claim3["parts"]}
    assert all(m["parity_passed"] for m in doc["models"])  # the exports are still checked


def test_quick_claims_on_torch_cpu(tmp_path) -> None:
    out = tmp_path / "claims"
    result = _quick(out)
    doc = json.loads((out / "claims.json").read_text())
    _check_doc(doc, result, "cpu")
    assert "PyTorch" in (out / "claims.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: exit 5 does not apply")
def test_torch_cuda_without_gpu_exits_5_before_any_work(tmp_path) -> None:
    out = tmp_path / "c"
    result = runner.invoke(app, ["claims", "--quick", "--backend", "torch", "--device", "cuda", "-o", str(out)])
    assert result.exit_code == 5, result.output
    assert "sees no CUDA GPU" in result.output and not out.exists()


@pytest.mark.gpu
def test_quick_claims_on_torch_cuda(tmp_path) -> None:
    out = tmp_path / "claims"
    result = _quick(out, "--device", "cuda")
    _check_doc(json.loads((out / "claims.json").read_text()), result, "cuda")
