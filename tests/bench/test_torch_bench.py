"""The PyTorch backend of `deploy bench` (deploy/bench/torch_model.py, validators/runtimes/pytorch.py).

CPU: the JSON record, --vs interleaving (a model against itself, ResNet-20 against
ResNet-18), dtype and memory-format runs against the float32 reference, every exit code
of the new options. `gpu`-marked tests need a CUDA GPU (CUDA events, graph replay).
No time is asserted, only orderings with a huge margin and intervals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from deploy.bench.torch_model import TorchBenchOptions, open_torch_runtime
from deploy.commands.bench import bench
from deploy.commands.common import guarded
from deploy.core.errors import BackendUnavailableError, BadInputError
from validators.latency import LatencyStats
from validators.runtimes.pytorch import TorchBenchRuntime

CUDA = torch.cuda.is_available()
no_cuda_here = pytest.mark.skipif(CUDA, reason="a CUDA GPU is present: exit 5 does not apply")


def invoke(*args: object):
    app = typer.Typer()
    app.command("bench")(guarded(bench))
    app.command("other")(lambda: None)  # two commands: typer keeps `bench` as a subcommand
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def r20(zoo_checkpoint) -> Path:
    return zoo_checkpoint("resnet20", "doconv")


def test_bench_checkpoint_json(r20: Path, tmp_path: Path) -> None:
    out = tmp_path / "torch.json"
    res = invoke("bench", r20, "--backend", "torch", "--batch", "2", "--iters", "8", "--warmup", "2", "--json-file", out)
    assert res.exit_code == 0, res.output
    assert "pytorch-eager-cpu" in res.output and "median" in res.output
    rec = json.loads(out.read_text())
    (entry,) = rec["results"]
    assert entry["input_shape"] == [2, 3, 32, 32] and entry["dtype"] == "fp32" and entry["copies_included"] is None
    assert entry["provider"] == "pytorch-eager-cpu" and entry["threads"] == torch.get_num_threads()
    stats = LatencyStats.from_dict(entry["stats"])
    assert stats.n == 8 and stats.batch == 2 and stats.clock == "perf_counter" and stats.warmup_runs_done == 2
    assert stats.min_ms <= stats.median_ms <= stats.max_ms


def test_vs_itself_contains_one(r20: Path, tmp_path: Path) -> None:
    outs = []
    for seed in (0, 1):  # two tries, as tests/bench/test_latency.py explains
        out = tmp_path / f"self{seed}.json"
        res = invoke("bench", r20, "--vs", r20, "--iters", "120", "--warmup", "5", "--seed", seed, "--json-file", out)
        assert res.exit_code == 0, res.output
        outs.append(json.loads(out.read_text())["vs"])
    assert all(v["ci_low"] <= v["ratio"] <= v["ci_high"] for v in outs)
    assert any(v["ci_low"] <= 1.0 <= v["ci_high"] for v in outs), outs


def test_resnet20_faster_than_resnet18(zoo_checkpoint, r20: Path, tmp_path: Path) -> None:
    r18 = zoo_checkpoint("resnet18", size=32)
    out = tmp_path / "r20_r18.json"
    res = invoke("bench", r20, "--vs", r18, "--iters", "25", "--warmup", "3", "--json-file", out)
    assert res.exit_code == 0, res.output
    vs = json.loads(out.read_text())["vs"]
    # eager PyTorch, one thread: ResNet-18 reads 44 MB of weights per image, ResNet-20 1 MB (about 0.45
    # measured here under load); only the ordering is asserted
    assert vs["ratio"] < 1, vs


def test_checkpoint_against_its_onnx_export(folded_export, tmp_path: Path) -> None:
    exported = folded_export("resnet20", "doconv", 32)
    out = tmp_path / "pt_vs_onnx.json"
    res = invoke("bench", exported.checkpoint, "--backend", "torch", "--vs", exported.onnx_path, "--iters", "10",
                 "--warmup", "2", "--json-file", out)
    assert res.exit_code == 0, res.output
    a, b = json.loads(out.read_text())["results"]
    assert (a["provider"], b["provider"]) == ("pytorch-eager-cpu", "CPUExecutionProvider")
    assert a["input_shape"] == b["input_shape"] == [1, 3, 32, 32] and a["stats"]["n"] == b["stats"]["n"] == 10


def test_dtypes_layouts_and_forms_agree_with_fp32(r20: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = open_torch_runtime(r20, TorchBenchOptions(fold=False)).run(x)  # the training form
    scale = float(np.abs(ref).max())
    for opts, rtol in ((TorchBenchOptions(), 1e-4), (TorchBenchOptions(channels_last=True), 1e-4),
                       (TorchBenchOptions(dtype="bf16"), 5e-2)):
        rt = open_torch_runtime(r20, opts)
        got = rt.run(x)
        assert got.dtype == np.float32 and got.shape == ref.shape == (2, 10)
        assert float(np.abs(got - ref).max()) <= rtol * scale, opts
        assert rt.timed_run(x) > 0 and rt.sample_shape == (3, 32, 32)
    assert not np.array_equal(open_torch_runtime(r20, TorchBenchOptions(dtype="bf16")).run(x), ref)


@pytest.mark.parametrize("args, needle", [
    (["--device", "tpu"], "--device 'tpu': choose cpu or cuda"),
    (["--dtype", "int8"], "--dtype 'int8'"),
    (["--cuda-graph"], "needs the --device cuda"),
    (["--backend", "ort"], "--backend ort runs model.onnx files"),
    (["--backend", "tvm"], "--backend tvm: choose"),
    (["--provider", "cpu"], "--provider and --include-copies do not apply to model.pt"),
])
def test_bad_torch_options_exit_2(r20: Path, args: list[str], needle: str) -> None:
    res = invoke("bench", r20, "--iters", "3", *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_torch_options_on_onnx_exit_2(tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    res = invoke("bench", onnx_path, "--device", "cuda")
    assert res.exit_code == 2 and "apply to the PyTorch backend" in res.output
    res = invoke("bench", onnx_path, "--backend", "torch")
    assert res.exit_code == 2 and "--backend torch runs model.pt files" in res.output


def test_training_mode_model_is_refused() -> None:
    with pytest.raises(BadInputError, match="training mode"):
        TorchBenchRuntime(torch.nn.Conv2d(3, 3, 1).train())


@no_cuda_here
def test_cuda_without_gpu_exits_5(r20: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.json"
    res = invoke("bench", r20, "--device", "cuda", "--json-file", out)
    assert res.exit_code == 5, res.output
    assert "sees no CUDA GPU" in res.output and "--device cpu" in res.output and not out.exists()
    with pytest.raises(BackendUnavailableError):
        TorchBenchRuntime(torch.nn.Conv2d(3, 3, 1).eval(), device="cuda")


# ---------------------------------------------------------------- CUDA (gpu-marked)

@pytest.mark.gpu
@pytest.mark.parametrize("extra", [[], ["--cuda-graph"], ["--dtype", "fp16", "--channels-last"]])
def test_gpu_bench_cli(r20: Path, tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "gpu.json"
    res = invoke("bench", r20, "--device", "cuda", "--batch", "8", "--iters", "30", "--json-file", out, *extra)
    assert res.exit_code == 0, res.output
    (entry,) = json.loads(out.read_text())["results"]
    assert entry["stats"]["clock"] == "cuda_event" and entry["stats"]["n"] == 30
    assert entry["copies_included"] is False and entry["cuda_graph"] == ("--cuda-graph" in extra)
    assert entry["device"] == torch.cuda.get_device_name(0)


@pytest.mark.gpu
def test_gpu_graph_replay_matches_eager_and_cpu(r20: Path) -> None:
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    cpu = open_torch_runtime(r20, TorchBenchOptions()).run(x)
    eager = open_torch_runtime(r20, TorchBenchOptions(device="cuda"))
    graph = open_torch_runtime(r20, TorchBenchOptions(device="cuda", cuda_graph=True))
    scale = float(np.abs(cpu).max())
    for rt in (eager, graph):
        got = rt.run(x)
        assert float(np.abs(got - cpu).max()) <= 1e-3 * scale  # fp32 (TF32 off), other summation orders
        assert rt.timed_run(x) > 0
    y = x[::-1].copy()  # a new input of the same shape is copied into the captured graph's buffer
    assert np.allclose(graph.run(y), eager.run(y), rtol=0, atol=1e-4 * scale)
