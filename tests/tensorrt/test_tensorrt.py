"""exporters/tensorrt/build.py and validators/runtimes/tensorrt.py.

CPU tests cover the plain logic (profile, options, metadata, compatibility, availability)
and every exit-code-5 path; `gpu` + `tensorrt`-marked tests need TensorRT 10 or 11 and a
CUDA GPU (tests/conftest.py skips them elsewhere).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from deploy.commands.bench import bench
from deploy.commands.build import build
from deploy.commands.common import guarded
from deploy.core.errors import BadInputError
from exporters.tensorrt.build import build_engine, engine_metadata
from exporters.tensorrt.options import compute_profile, validate_build_options
from validators.onnx_file import OnnxInput, onnx_input
from validators.runtimes.tensorrt_env import (
    BatchProfile,
    check_batch_in_profile,
    check_engine_compat,
    load_engine_metadata,
    metadata_path,
    tensorrt_available,
)

TRT_OK, TRT_REASON = tensorrt_available()
no_trt_here = pytest.mark.skipif(TRT_OK, reason="TensorRT and a GPU are present: exit 5 does not apply")


def export_onnx(model: nn.Module, path: Path, size: int = 32, dynamic: bool = True) -> Path:
    model.eval()
    torch.onnx.export(model, torch.randn(1, 3, size, size), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None)
    return path


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.helpers import gated_cnn

    d = tmp_path_factory.mktemp("trt")
    return {"dyn": export_onnx(small_cnn(), d / "model.onnx"),
            "fixed": export_onnx(small_cnn(), d / "fixed.onnx", dynamic=False),
            "gated": export_onnx(gated_cnn(), d / "gated.onnx"), "dir": d}


def invoke(*args: object):
    app = typer.Typer()
    app.command("bench")(guarded(bench))
    app.command("build")(guarded(build))
    return CliRunner().invoke(app, [str(a) for a in args])


ENV = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


# ---------------------------------------------------------------- profile

def test_onnx_input_reads_dynamic_and_fixed_batch(onnx_files: dict[str, Path]) -> None:
    assert onnx_input(onnx_files["dyn"]) == OnnxInput("input", (None, 3, 32, 32))
    assert onnx_input(onnx_files["fixed"]) == OnnxInput("input", (1, 3, 32, 32))


@pytest.mark.parametrize("kw, expect", [
    ({}, (1, 1, 1)),
    ({"max_batch": 64}, (1, 64, 64)),
    ({"opt_batch": 16}, (1, 16, 16)),
    ({"min_batch": 2, "opt_batch": 8, "max_batch": 32}, (2, 8, 32)),
    ({"min_batch": 4}, (4, 4, 4)),
])
def test_compute_profile_dynamic(kw: dict, expect: tuple[int, int, int]) -> None:
    p = compute_profile(OnnxInput("x", (None, 3, 224, 224)), **kw)
    assert (p.min, p.opt, p.max) == tuple((b, 3, 224, 224) for b in expect)
    assert p.admits((expect[2], 3, 224, 224)) and not p.admits((expect[2] + 1, 3, 224, 224))
    assert not p.admits((expect[0], 3, 112, 112))
    assert BatchProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize("kw, needle", [
    ({"min_batch": 8, "opt_batch": 4, "max_batch": 16}, "min <= opt <= max"),
    ({"opt_batch": 32, "max_batch": 16}, "min <= opt <= max"),
    ({"min_batch": 0}, "positive"),
    ({"max_batch": -3}, "positive"),
])
def test_compute_profile_rejects(kw: dict, needle: str) -> None:
    with pytest.raises(BadInputError, match=needle):
        compute_profile(OnnxInput("x", (None, 3, 32, 32)), **kw)


def test_compute_profile_fixed_batch_and_dynamic_spatial() -> None:
    fixed = OnnxInput("x", (1, 3, 32, 32))
    assert compute_profile(fixed).max == (1, 3, 32, 32)
    assert compute_profile(fixed, min_batch=1, max_batch=1).opt == (1, 3, 32, 32)
    with pytest.raises(BadInputError, match="fixed batch of 1"):
        compute_profile(fixed, max_batch=8)
    with pytest.raises(BadInputError, match="dynamic input size: give `min_size`/`opt_size`/`max_size`"):
        compute_profile(OnnxInput("x", (None, 3, None, None)), max_batch=8)
    with pytest.raises(BadInputError, match="dynamic non-batch dims"):
        compute_profile(OnnxInput("x", (None, None, 32, 32)))


def test_compute_profile_dynamic_height_and_width() -> None:
    dyn = OnnxInput("x", (None, 3, None, None))
    p = compute_profile(dyn, max_batch=8, min_size=64, opt_size=224, max_size=256)
    assert (p.min, p.opt, p.max) == ((1, 3, 64, 64), (8, 3, 224, 224), (8, 3, 256, 256))
    assert p.admits((4, 3, 128, 128)) and not p.admits((4, 3, 300, 300))
    assert compute_profile(dyn, opt_size=224).min == (1, 3, 224, 224)  # min size defaults to opt
    with pytest.raises(BadInputError, match="input size profile needs min <= opt <= max"):
        compute_profile(dyn, min_size=256, opt_size=224)
    with pytest.raises(BadInputError, match="fixed input size of 32"):
        compute_profile(OnnxInput("x", (None, 3, 32, 32)), opt_size=64)
    assert compute_profile(OnnxInput("x", (None, 3, 32, 32)), opt_size=32).opt == (1, 3, 32, 32)


# ---------------------------------------------------------------- options and metadata

def test_validate_build_options(onnx_files: dict[str, Path]) -> None:
    d = onnx_files["dir"]
    opts = validate_build_options(onnx_files["dyn"], d / "e.plan", fp16=True, workspace_gib=2,
                                  timing_cache=d / "cache.bin")
    assert opts.precision == "fp16" and opts.workspace_gib == 2 and opts.timing_cache == d / "cache.bin"
    assert validate_build_options(onnx_files["dyn"], d / "e.plan").precision == "fp32"
    bad = [({"onnx_path": d / "nope.onnx"}, "does not exist"), ({"engine_path": d / "e.bin"}, "must end in .plan"),
           ({"engine_path": d / "missing_dir" / "e.plan"}, "does not exist"),
           ({"workspace_gib": -1}, "`workspace`"), ({"timing_cache": d / "no" / "c.bin"}, "`timing_cache`"),
           ({"fp16": True, "tf32": True}, "exclusive")]
    for override, needle in bad:
        kw = {"onnx_path": onnx_files["dyn"], "engine_path": d / "e.plan"} | override
        with pytest.raises(BadInputError, match=needle):
            validate_build_options(kw.pop("onnx_path"), kw.pop("engine_path"), **kw)


def test_metadata_record_and_reload(onnx_files: dict[str, Path]) -> None:
    d = onnx_files["dir"]
    opts = validate_build_options(onnx_files["dyn"], d / "m.plan", fp16=True, max_batch=64)
    prof = compute_profile(onnx_input(opts.onnx_path), max_batch=64)
    meta = engine_metadata(opts, prof, ENV, "a" * 64, "b" * 64, ["logits"], 1.5)
    assert meta["precision"] == "fp16" and meta["profile"]["max"] == [64, 3, 32, 32]
    assert meta["tensorrt_version"] == "10.3.0" and meta["compute_capability"] == "9.0"
    assert meta["source_onnx_sha256"] == "a" * 64 and meta["outputs"] == ["logits"]
    assert metadata_path(d / "m.plan") == d / "m.plan.json"
    assert load_engine_metadata(d / "m.plan") is None
    metadata_path(d / "m.plan").write_text(json.dumps(meta))
    assert load_engine_metadata(d / "m.plan") == meta
    check_batch_in_profile(meta, 64)
    with pytest.raises(BadInputError, match=r"outside the engine's profile \[1, 64\]"):
        check_batch_in_profile(meta, 65)
    metadata_path(d / "m.plan").write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        load_engine_metadata(d / "m.plan")


def test_engine_compatibility() -> None:
    meta = dict(ENV, source_onnx="model.onnx")
    assert check_engine_compat(meta, ENV) == []
    other_name = dict(ENV, gpu_name="NVIDIA H100 PCIe")
    (warning,) = check_engine_compat(meta, other_name)
    assert "H100 PCIe" in warning
    with pytest.raises(BadInputError, match="TensorRT 10.3.0 .* TensorRT 10.4.0"):
        check_engine_compat(meta, dict(ENV, tensorrt_version="10.4.0"))
    with pytest.raises(BadInputError, match="rebuild it here"):
        check_engine_compat(meta, dict(ENV, compute_capability="8.0", gpu_name="A100"))


def test_tensorrt_available_never_raises_and_lazy_import() -> None:
    ok, reason = tensorrt_available()
    assert isinstance(ok, bool) and reason
    if not ok:
        assert "TensorRT" in reason or "GPU" in reason
    import importlib

    for mod in ("exporters.tensorrt.build", "validators.runtimes.tensorrt_env", "validators.runtimes.tensorrt",
                "deploy.commands.bench"):
        importlib.import_module(mod)
    assert TRT_OK or "tensorrt" not in sys.modules


# ---------------------------------------------------------------- exit code 5 (no TensorRT / no GPU here)

@no_trt_here
def test_build_exits_5_and_writes_nothing(onnx_files: dict[str, Path]) -> None:
    out = onnx_files["dir"] / "engine.plan"
    res = invoke("build", onnx_files["dyn"], "-o", out, "--fp16", "--opt-batch", "8", "--max-batch", "8")
    assert res.exit_code == 5, res.output
    assert "deploy bench model.onnx" in res.output and "runs on CPU" in res.output
    assert not out.exists() and not metadata_path(out).exists()


@no_trt_here
def test_build_engine_api_raises_5(onnx_files: dict[str, Path]) -> None:
    from deploy.core.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError) as err:
        build_engine(validate_build_options(onnx_files["dyn"], onnx_files["dir"] / "api.plan"))
    assert err.value.exit_code == 5


@no_trt_here
def test_bench_engine_exits_5(onnx_files: dict[str, Path]) -> None:
    plan = onnx_files["dir"] / "some.plan"
    plan.write_bytes(b"\x00" * 64)
    res = invoke("bench", plan, "--batch", "1")
    assert res.exit_code == 5, res.output
    assert "deploy bench model.onnx" in res.output
    res = invoke("bench", onnx_files["dyn"], "--vs", plan, "--iters", "3")
    assert res.exit_code == 5, res.output


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_bench_onnx_gpu_provider_exits_5(onnx_files: dict[str, Path], provider: str) -> None:
    import onnxruntime as ort

    from validators.runtimes.onnxruntime import ORT_PROVIDERS

    if ORT_PROVIDERS[provider] in ort.get_available_providers():
        pytest.skip(f"{ORT_PROVIDERS[provider]} is installed here")
    res = invoke("bench", onnx_files["dyn"], "--provider", provider, "--iters", "3")
    assert res.exit_code == 5, res.output
    assert ORT_PROVIDERS[provider] in res.output and "--provider cpu" in res.output


def test_build_bad_profile_is_exit_2_before_5(onnx_files: dict[str, Path]) -> None:
    res = invoke("build", onnx_files["dyn"], "-o", onnx_files["dir"] / "e.plan", "--min-batch", "8",
                 "--opt-batch", "4")
    assert res.exit_code == 2, res.output
    res = invoke("build", onnx_files["fixed"], "-o", onnx_files["dir"] / "e.plan", "--max-batch", "8")
    assert res.exit_code == 2 and "fixed batch" in res.output


# ---------------------------------------------------------------- GPU (TensorRT 10 or 11 + CUDA)

def _build(onnx_files: dict[str, Path], name: str, source: str = "dyn", **kw) -> tuple[Path, dict]:
    out = onnx_files["dir"] / f"{name}.plan"
    kw.setdefault("timing_cache", onnx_files["dir"] / "tc.bin")
    meta = build_engine(validate_build_options(onnx_files[source], out, **kw))
    return out, meta


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_gpu_build_writes_engine_and_metadata(onnx_files: dict[str, Path]) -> None:
    from deploy.core.atomic import sha256_file

    out, meta = _build(onnx_files, "fp32", min_batch=1, opt_batch=8, max_batch=16)
    assert out.stat().st_size > 0 and (onnx_files["dir"] / "tc.bin").stat().st_size > 0
    assert load_engine_metadata(out) == json.loads(json.dumps(meta))
    assert meta["profile"] == {"input": "input", "min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [16, 3, 32, 32]}
    assert meta["precision"] == "fp32" and meta["engine_sha256"] == sha256_file(out)
    assert meta["source_onnx_sha256"] == sha256_file(onnx_files["dyn"])
    assert int(meta["tensorrt_version"].split(".")[0]) in (10, 11) and meta["precision_route"] == "fp32"
    assert meta["outputs"] == ["logits"] and meta["notes"] == []


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("fp16", [False, True])
def test_gpu_parity_with_onnxruntime(onnx_files: dict[str, Path], fp16: bool) -> None:
    """On the gated model with far-apart logits (tests/helpers.py): fp16 within 1e-2 * max|ref| and
    top-1 agreement on the rows whose margin exceeds that bound, the near-ties reported."""
    from deploy.core.metrics import Tolerance
    from validators.parity import check_parity
    from validators.runtimes.onnxruntime import OrtRuntime
    from validators.runtimes.tensorrt import TensorRTRuntime

    out, meta = _build(onnx_files, "fp16" if fp16 else "fp32p", source="gated", fp16=fp16, max_batch=64)
    major = int(meta["tensorrt_version"].split(".")[0])
    if fp16:
        assert meta["precision_route"] == ("fp16 (builder flag)" if major == 10 else "fp16 (fp16 ONNX, strongly typed)")
        assert (meta["fp16_onnx_check"] is None) == (major == 10)
    tol = Tolerance.for_precision("fp16" if fp16 else "fp32")
    for graph in (False, True):
        rep = check_parity(OrtRuntime(onnx_files["gated"]), [TensorRTRuntime(out, cuda_graph=graph)], (3, 32, 32),
                           samples=2, batches=(64, 5), tol=tol)
        cand = rep.candidates[0]
        assert rep.passed, rep.summary()
        assert cand.top1_rows >= 0.9 * (2 * 69) and cand.top1_rows + cand.top1_excluded == 2 * 69
    rt = TensorRTRuntime(out)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    assert rt.run(x).shape == (5, 10)  # a second shape inside the profile
    with pytest.raises(BadInputError, match="outside the engine's profile"):
        rt.run(np.zeros((65, 3, 32, 32), np.float32))


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_gpu_mismatched_timing_cache_is_replaced(onnx_files: dict[str, Path]) -> None:
    from exporters.tensorrt.timing_cache import plan_timing_cache, record_path, save_timing_cache
    from validators.runtimes.tensorrt_env import running_environment

    env = running_environment()
    garbage = onnx_files["dir"] / "garbage.bin"
    garbage.write_bytes(b"\x13 not a timing cache" * 4)  # no record: offered, refused by TensorRT, replaced
    _, meta = _build(onnx_files, "tc_garbage", timing_cache=garbage)
    assert len(meta["notes"]) <= 1 and all("TensorRT refused it" in n for n in meta["notes"])
    assert plan_timing_cache(garbage, env).data == garbage.read_bytes() != b"\x13 not a timing cache" * 4
    foreign = onnx_files["dir"] / "foreign.bin"
    save_timing_cache(foreign, b"timings", dict(env, gpu_name="Tesla T4", compute_capability="7.5"))
    _, meta = _build(onnx_files, "tc_foreign", timing_cache=foreign)
    assert len(meta["notes"]) == 1 and "Tesla T4" in meta["notes"][0]
    assert json.loads(record_path(foreign).read_text())["gpu_name"] == env["gpu_name"]


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_gpu_bench_engine_cli(onnx_files: dict[str, Path]) -> None:
    out, _ = _build(onnx_files, "bench", opt_batch=8, max_batch=8)
    js = onnx_files["dir"] / "bench_trt.json"
    for extra in ([], ["--include-copies"], ["--cuda-graph"]):
        res = invoke("bench", out, "--batch", "8", "--iters", "30", "--json-file", js, *extra)
        assert res.exit_code == 0, res.output
        (entry,) = json.loads(js.read_text())["results"]
        assert entry["provider"] == "tensorrt" and entry["copies_included"] == ("--include-copies" in extra)
        assert entry["stats"]["clock"] == "cuda_event" and entry["stats"]["n"] == 30
        s = entry["stats"]
        assert s["min_ms"] <= s["median_ms"] <= s["p99_ms"] <= s["max_ms"]
    res = invoke("bench", out, "--batch", "16")
    assert res.exit_code == 2 and "outside the engine's profile" in res.output
