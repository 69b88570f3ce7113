"""The CPU side of engine builds: timing-cache safety, polygraphy's loaders, the precision routes.

Nothing here needs TensorRT: polygraphy imports it only when a loader is called, and the
timing-cache decision reads the file and its record. The builds themselves are
`gpu`/`tensorrt`-marked in tests/tensorrt/test_tensorrt.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.core.errors import BackendUnavailableError
from exporters.tensorrt.options import BuildOptions
from exporters.tensorrt.precision import (
    FP16_FLAG,
    FP16_ONNX,
    FP32,
    INT8_QDQ,
    TF32,
    config_options,
    fp16_parity_batches,
    network_options,
    precision_route,
)
from exporters.tensorrt.timing_cache import CACHE_FORMAT, plan_timing_cache, record_path, refused_note, save_timing_cache
from validators.runtimes.tensorrt_env import BatchProfile, tensorrt_available, tensorrt_major

HERE = {"tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
PROFILE = BatchProfile("input", (1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32))


# ---------------------------------------------------------------- timing caches

def test_timing_cache_plans(tmp_path: Path) -> None:
    cache = tmp_path / "tc.bin"
    assert plan_timing_cache(None, HERE).saves is False
    fresh = plan_timing_cache(cache, HERE)  # no file yet: build with an empty cache, then save it
    assert fresh.saves and fresh.data == b"" and fresh.note is None
    cache.write_bytes(b"")
    assert "is empty: ignored" in plan_timing_cache(cache, HERE).note
    cache.write_bytes(b"\x00fake tactic timings\xff" * 8)  # from elsewhere, no record: TensorRT verifies it
    foreign = plan_timing_cache(cache, HERE)
    assert foreign.data == cache.read_bytes() and foreign.note is None
    record_path(cache).write_text("{not json")
    assert plan_timing_cache(cache, HERE).data == cache.read_bytes()  # an unreadable record is no record


@pytest.mark.parametrize("key, value", [("gpu_name", "NVIDIA A100-SXM4-80GB"), ("compute_capability", "8.0"),
                                        ("tensorrt_version", "11.4.0.106")])
def test_mismatched_timing_cache_is_one_line_and_ignored(tmp_path: Path, key: str, value: str) -> None:
    cache = tmp_path / "tc.bin"
    save_timing_cache(cache, b"timings of another machine", dict(HERE, **{key: value}))
    assert json.loads(record_path(cache).read_text()) == {"format": CACHE_FORMAT, **dict(HERE, **{key: value})}
    plan = plan_timing_cache(cache, HERE)
    assert plan.data == b"" and plan.saves  # ignored, and this build's cache replaces it
    assert plan.note is not None and "\n" not in plan.note and value in plan.note and "ignored" in plan.note
    assert cache.read_bytes() == b"timings of another machine"  # deciding never modifies the file
    save_timing_cache(cache, b"timings of this machine", HERE)
    assert plan_timing_cache(cache, HERE).data == b"timings of this machine"
    assert "\n" not in refused_note(cache) and "ignored" in refused_note(cache)


def test_build_with_a_fake_cache_never_crashes(tmp_path: Path, deploy_cli) -> None:
    """Without TensorRT the build stops at exit 5 before the cache is read; with it the cache is
    offered and, if refused, replaced (tests/tensorrt/test_tensorrt.py). Either way: never exit 1."""
    from tests.tensorrt.test_tensorrt import export_onnx, small_cnn

    model = export_onnx(small_cnn(), tmp_path / "m.onnx")
    cache = tmp_path / "tc.bin"
    cache.write_bytes(b"\x13garbage")
    save_timing_cache(tmp_path / "other.bin", b"x", dict(HERE, gpu_name="Tesla T4", compute_capability="7.5"))
    for fake in (cache, tmp_path / "other.bin"):
        before = fake.read_bytes()
        run = deploy_cli("build", model, "-o", tmp_path / "e.plan", "--timing-cache", fake)
        assert run.exit_code in ((0,) if tensorrt_available()[0] else (5,)), run.stderr
        if run.exit_code == 5:
            assert fake.read_bytes() == before and not (tmp_path / "e.plan").exists()


# ---------------------------------------------------------------- precision routes and polygraphy options

def test_precision_routes_per_major() -> None:
    assert [precision_route(10, *f) for f in ((False, False), (True, False), (False, True))] == [FP32, FP16_FLAG, TF32]
    assert [precision_route(11, *f) for f in ((False, False), (True, False), (False, True))] == [FP32, FP16_ONNX, TF32]
    assert network_options(10) == {} and network_options(11) == {"strongly_typed": True}
    assert precision_route(10, False, qdq=True) == precision_route(11, False, qdq=True) == INT8_QDQ
    assert network_options(10, qdq=True) == network_options(11, qdq=True) == {"strongly_typed": True}
    assert (tensorrt_major("10.13.3.9"), tensorrt_major("11.4.0.106")) == (10, 11)
    assert fp16_parity_batches(PROFILE) == (1, 4)
    assert fp16_parity_batches(BatchProfile("x", (2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8))) == (2,)


def test_config_options_build_polygraphy_profiles(tmp_path: Path) -> None:
    opts = BuildOptions(tmp_path / "m.onnx", tmp_path / "e.plan", fp16=True, workspace_gib=1.5)
    on10 = config_options(10, opts, PROFILE, "WORKSPACE")
    on11 = config_options(11, opts, PROFILE, "WORKSPACE")
    assert on10["fp16"] is True and "fp16" not in on11  # TensorRT 11 builds fp16 from an fp16 ONNX instead
    assert on10["tf32"] is False and on10["memory_pool_limits"] == {"WORKSPACE": 3 << 29}
    (profile,) = on10["profiles"]
    shapes = profile["input"]
    assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == (PROFILE.min, PROFILE.opt, PROFILE.max)
    assert "memory_pool_limits" not in config_options(10, BuildOptions(opts.onnx_path, opts.engine_path), PROFILE, "W")


def test_polygraphy_loaders_import_tensorrt_lazily(tmp_path: Path) -> None:
    """polygraphy's loaders are built without TensorRT; only calling them imports it (checked in a
    fresh interpreter, where nothing else has imported anything)."""
    code = (
        "import sys\n"
        "from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, "
        "PostprocessConfig, Profile\n"
        f"net = NetworkFromOnnxPath({str(tmp_path / 'm.onnx')!r}, strongly_typed=True)\n"
        "cfg = PostprocessConfig(CreateConfig(fp16=True, profiles=[Profile().add('x', (1, 3), (2, 3), (4, 3))]), "
        "lambda b, n, c: None)\n"
        "EngineBytesFromNetwork(net, cfg)\n"
        "print('tensorrt' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_missing_polygraphy_exits_5(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporters.tensorrt import build as exporter

    monkeypatch.setitem(sys.modules, "polygraphy.backend", None)  # as if not installed
    with pytest.raises(BackendUnavailableError, match="polygraphy is not installed") as err:
        exporter._polygraphy()
    assert err.value.exit_code == 5


@pytest.mark.skipif(tensorrt_available()[0], reason="TensorRT and a GPU are present")
def test_engine_builder_availability_names_what_is_missing() -> None:
    from exporters.tensorrt.build import engine_builder_available, require_engine_builder

    ok, reason = engine_builder_available()
    assert not ok and reason == tensorrt_available()[1]
    with pytest.raises(BackendUnavailableError, match="runs on CPU"):
        require_engine_builder(fp16=True)
