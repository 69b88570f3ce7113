"""The runtime that times an artifact: one ``open_runtime`` for `deploy bench` and `deploy claims`,
every availability check first (exit 5 where TensorRT, a GPU or a provider is missing), and the
facts a report records about where it ran.

Torch-free: the PyTorch backend (``deploy.bench.torch_model``) is imported only for a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from deploy.bench.artifacts import engine_bench_shape, onnx_bench_shape
from deploy.core.environment import host_device
from deploy.core.errors import BadInputError, ConvDeployError, first_line
from deploy.core.limits import check_input_elements
from validators.runtimes.base import Runtime
from validators.runtimes.onnxruntime import ORT_PROVIDERS, OrtRuntime
from validators.runtimes.tensorrt import TensorRTRuntime
from validators.runtimes.tensorrt_env import require_tensorrt

if TYPE_CHECKING:
    from deploy.bench.torch_model import TorchBenchOptions


def open_runtime(path: Path, kind: str, provider: Optional[str] = None, threads: Optional[int] = None,
                 include_copies: bool = False, cuda_graph: bool = False, spin: bool = True,
                 torch_opts: Optional["TorchBenchOptions"] = None, input_size: Optional[tuple[int, int]] = None) -> Runtime:
    """Construct the runtime for an artifact; every availability check happens here first."""
    if kind == "onnx":
        if cuda_graph:
            raise BadInputError("`cuda_graph` applies to engine.plan (TensorRT) and to model.pt on `device` cuda")
        return OrtRuntime(str(path), threads=threads, provider=provider or "cpu", spin=spin)
    if kind == "torch":
        if provider is not None or include_copies:
            raise BadInputError("`provider` and `include_copies` do not apply to model.pt: use `device` cpu|cuda")
        from deploy.bench import torch_model  # noqa: PLC0415 - torch: only a model.pt needs it; bench x.onnx stays torch-free

        opts = torch_opts or torch_model.TorchBenchOptions(cuda_graph=cuda_graph)
        return torch_model.open_torch_runtime(path, opts, input_size, threads)
    if provider not in (None, "tensorrt"):
        raise BadInputError(f"`provider` {provider}: an engine.plan runs on TensorRT only; "
                            "bench the model.onnx for other providers")
    if threads is not None:
        raise BadInputError("`threads` sets ONNX Runtime's intra-op threads; it does not apply to engine.plan")
    require_tensorrt()
    return TensorRTRuntime(path, include_copies=include_copies, cuda_graph=cuda_graph)


def runtime_facts(rt: Any, kind: str, provider: Optional[str], threads: Optional[int],
                  include_copies: bool) -> dict[str, Any]:
    """Device, provider, threads and copies, merged over the runtime's own describe()."""
    desc = dict(rt.describe()) if hasattr(rt, "describe") else {}
    if kind == "torch":
        cpu = desc.get("clock") == "perf_counter"
        facts = {"provider": desc.get("provider"), "threads": desc.get("threads"),
                 "device": host_device() if cpu else desc.get("device"),
                 # the input tensor is staged on the device once, outside the timing
                 "copies_included": None if cpu else False}
    elif kind == "onnx":
        prov = provider or "cpu"
        facts = {"provider": ORT_PROVIDERS[prov], "threads": desc.get("threads", threads),
                 "device": host_device() if prov == "cpu" else _gpu_name(),
                 # session.run takes and returns host numpy arrays: on a GPU provider the copies are in
                 "copies_included": None if prov == "cpu" else True}
    else:
        facts = {"provider": "tensorrt", "threads": None, "device": desc.get("device"),
                 "copies_included": include_copies}
    return {**desc, **facts, "runtime": getattr(rt, "name", desc.get("runtime"))}



def _gpu_name() -> str:
    try:
        import torch  # noqa: PLC0415 - heavy; only a GPU provider's label needs it

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CUDA GPU"
    except Exception:  # noqa: BLE001 - only a label
        return "CUDA GPU"


def open_all(paths: list[Path], kinds: list[str], batch: int, input_size: Optional[tuple[int, int]], provider: Optional[str],
             threads: Optional[int], include_copies: bool, cuda_graph: bool,
             torch_opts: Optional["TorchBenchOptions"] = None) -> tuple[list[Any], list[tuple[int, ...]]]:
    """The runtimes to time (one when A is B: an A/A check of the harness) and the input shape of each."""
    shapes = [onnx_bench_shape(p, batch, input_size) if k == "onnx" else
              engine_bench_shape(p, batch, input_size) if k == "engine" else () for p, k in zip(paths, kinds)]
    # the same file twice is an A/A check of the harness: one session timed in both slots
    # (two sessions of one model differ by ~1 % on tiny models: allocation, not the model)
    same = len(paths) == 2 and paths[1].resolve() == paths[0].resolve()
    # two ONNX Runtime sessions taking turns: idle pool threads must sleep, not spin
    spin = len(paths) == 1 or same
    runtimes: list[Any] = [open_runtime(paths[0], kinds[0], provider, threads, include_copies, cuda_graph, spin,
                                        torch_opts, input_size)]
    if len(paths) == 2:
        runtimes.append(runtimes[0] if same else open_runtime(paths[1], kinds[1], provider, threads, include_copies,
                                                              cuda_graph, spin, torch_opts, input_size))
    shapes = [s or (batch, *(rt.profile.opt[1:] if k == "engine" else rt.sample_shape))
              for s, rt, k in zip(shapes, runtimes, kinds)]
    for shape, rt, path in zip(shapes, runtimes, paths):
        check_input_elements(shape)
        probe_run(rt, shape, path)
    if len(shapes) == 2 and shapes[0] != shapes[1]:
        raise BadInputError(f"{paths[0].name} takes {shapes[0]} and {paths[1].name} takes {shapes[1]}: "
                            "`vs` compares on the same input; export both at the same input size")
    return runtimes, shapes


def probe_run(rt: Any, shape: tuple[int, ...], path: Path) -> None:
    """One untimed run: a model that cannot run on its own input shape is bad input (exit 2), not a crash."""
    try:
        rt.run(np.zeros(shape, dtype=np.float32))
    except ConvDeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - a runtime refuses a broken graph with its own exception types
        reason = first_line(exc)
        raise BadInputError(f"{path} fails to run on a {'x'.join(map(str, shape))} input ({reason}): "
                            "re-export it or check the file") from exc


