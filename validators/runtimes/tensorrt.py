"""TensorRT engine runtime: the same ``run_all(x)`` / ``run(x)`` interface as the others.

Deserializes ``engine.plan``, refuses an engine built for another TensorRT version or
GPU architecture (engine.plan.json, ``validators.runtimes.tensorrt_env.check_engine_compat``), sets the
input shape, allocates device buffers as torch CUDA tensors, and runs
``execute_async_v3`` on a CUDA stream (TensorRT 10 API). ``timed_run`` times one batch
with CUDA events: the engine alone by default, host<->device copies included with
``include_copies=True``. ``cuda_graph=True`` captures the enqueue into a CUDA graph
per input shape and replays it. GPU only; TensorRT is imported through
``validators.runtimes.tensorrt_env``, the project's single import of it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from deploy.core.errors import BadInputError
from validators.runtimes.tensorrt_env import (
    BatchProfile,
    check_engine_compat,
    load_engine_metadata,
    require_tensorrt,
    running_environment,
)


class CudaEventTimer:
    """Elapsed GPU time between two events recorded on ``stream`` (milliseconds)."""

    def __init__(self, stream: Any):
        import torch  # noqa: PLC0415 - torch is heavy and only the GPU path needs it: ONNX-only commands stay torch-free

        self.stream = stream
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def __enter__(self) -> "CudaEventTimer":
        self.start.record(self.stream)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end.record(self.stream)

    def elapsed_ms(self) -> float:
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))


class TensorRTRuntime:
    """Run a serialized TensorRT engine on the current CUDA device."""

    name = "tensorrt"
    clock = "cuda_event"

    def __init__(self, engine_path: str | Path, include_copies: bool = False, cuda_graph: bool = False):
        path = Path(engine_path)
        if not path.is_file():
            raise BadInputError(f"{path} does not exist: build it with `deploy build model.onnx -o {path}`")
        trt = require_tensorrt()
        import torch  # noqa: PLC0415 - torch is heavy and only the GPU path needs it: ONNX-only commands stay torch-free

        self._trt, self._torch = trt, torch
        self.path, self.include_copies, self.cuda_graph = path, include_copies, cuda_graph
        self.meta = load_engine_metadata(path)
        self.env = running_environment()
        self.warnings = check_engine_compat(self.meta, self.env) if self.meta else [
            f"{path.name}.json is missing: TensorRT version/GPU of the engine cannot be checked"]
        for w in self.warnings:
            warnings.warn(w, stacklevel=2)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BadInputError(f"TensorRT could not deserialize {path} (other TensorRT version or GPU?): "
                                "rebuild it here with `deploy build model.onnx -o engine.plan`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1 or not self.outputs:
            raise BadInputError(f"{path} has inputs {self.inputs} and outputs {self.outputs}: "
                                "convdeploy runs single-input image models")
        lo, opt, hi = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        self.profile = BatchProfile(self.inputs[0], tuple(lo), tuple(opt), tuple(hi))
        self.stream = torch.cuda.Stream()
        self._shape: tuple[int, ...] | None = None
        self._dev: dict[str, Any] = {}
        self._host: dict[str, Any] = {}
        self._graph: Any = None
        self._staged: Any = None

    # -- buffers ---------------------------------------------------------------
    def _torch_dtype(self, name: str) -> Any:
        np_dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
        return self._torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype

    def _prepare(self, shape: tuple[int, ...]) -> None:
        """Set the input shape and (re)allocate device and pinned host buffers on change."""
        if shape == self._shape:
            return
        if not self.profile.admits(shape):
            raise BadInputError(f"input shape {shape} is outside the engine's profile "
                                f"[{self.profile.min}, {self.profile.max}]: rebuild with `max_batch` {shape[0]}")
        torch, name_in = self._torch, self.inputs[0]
        if not self.context.set_input_shape(name_in, shape):
            raise BadInputError(f"TensorRT refused input shape {shape} for {name_in!r}")
        self._dev, self._host = {}, {}
        for name in self.inputs + self.outputs:
            dims = tuple(self.context.get_tensor_shape(name))
            dtype = self._torch_dtype(name)
            self._dev[name] = torch.empty(dims, dtype=dtype, device="cuda")
            self._host[name] = torch.empty(dims, dtype=dtype, pin_memory=True)
            if not self.context.set_tensor_address(name, self._dev[name].data_ptr()):
                raise BadInputError(f"TensorRT refused the device buffer of {name!r}")
        self._shape, self._graph, self._staged = shape, None, None

    def _enqueue(self) -> None:
        """Launch the engine on self.stream (graph replay when captured)."""
        torch = self._torch
        if self.cuda_graph:
            if self._graph is None:
                self._capture()
            with torch.cuda.stream(self.stream):
                self._graph.replay()
        elif not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _capture(self) -> None:
        torch = self._torch
        # one plain enqueue first: TensorRT defers shape-dependent setup to the first launch
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed before CUDA graph capture")
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self._graph = graph

    def _h2d(self, x: np.ndarray) -> None:
        name = self.inputs[0]
        host = self._host[name]
        host.copy_(self._torch.from_numpy(np.ascontiguousarray(x)).to(host.dtype))
        self._dev[name].copy_(host, non_blocking=True)

    def _d2h(self) -> None:
        for name in self.outputs:
            self._host[name].copy_(self._dev[name], non_blocking=True)

    def _check(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim != len(self.profile.min):
            raise BadInputError(f"expected a {len(self.profile.min)}-d numpy array, got {getattr(x, 'shape', type(x))}")
        self._prepare(tuple(int(d) for d in x.shape))
        return x

    # -- public ----------------------------------------------------------------
    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Copy ``x`` in, run, copy every output out by name (blocking)."""
        torch = self._torch
        self._check(x)
        with torch.cuda.stream(self.stream):
            self._h2d(x)
            self._enqueue()
            self._d2h()
        self.stream.synchronize()
        self._staged = None
        return {name: self._host[name].numpy().astype(np.float32, copy=True) for name in self.outputs}

    def run(self, x: np.ndarray) -> np.ndarray:
        """Copy ``x`` in, run, copy the first output out (blocking)."""
        return self.run_all(x)[self.outputs[0]]

    def timed_run(self, x: np.ndarray) -> float:
        """One run timed with CUDA events, in milliseconds (copies only with include_copies)."""
        torch = self._torch
        self._check(x)
        with torch.cuda.stream(self.stream):
            if self.include_copies:
                with CudaEventTimer(self.stream) as t:
                    self._h2d(x)
                    self._enqueue()
                    self._d2h()
            else:
                if self._staged is not x:  # the harness passes the same array every run
                    self._h2d(x)
                    self._staged = x
                with CudaEventTimer(self.stream) as t:
                    self._enqueue()
        return t.elapsed_ms()

    def describe(self) -> dict[str, Any]:
        meta = self.meta or {}
        return {"runtime": self.name, "provider": "tensorrt", "device": self.env["gpu_name"],
                "compute_capability": self.env["compute_capability"],
                "tensorrt_version": self.env["tensorrt_version"], "precision": meta.get("precision", "unknown"),
                "profile": self.profile.to_dict(), "include_copies": self.include_copies,
                "cuda_graph": self.cuda_graph, "clock": self.clock, "engine": str(self.path),
                "warnings": list(self.warnings)}
