"""A PyTorch module behind the same ``run_all(x) -> {name: output}`` interface as the other runtimes.

Tuple, list, dict and nested outputs are flattened and named as the exporter names the
ONNX graph's outputs (``deploy.core.outputs``). ``TorchRuntime`` is the parity reference
(float32, the device of the weights); ``TorchBenchRuntime`` is the `torch` backend of
`deploy bench` and `deploy claims`: a module at a chosen device, dtype and memory format,
timed with its own clock (CUDA events on a GPU).
"""

from __future__ import annotations

import contextlib
import platform
import time
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from deploy.core.errors import BackendUnavailableError, BadInputError
from deploy.core.outputs import flatten_outputs
from validators.runtimes.onnxruntime import as_float32_nchw


def named_outputs(out: object) -> list[tuple[str, torch.Tensor]]:
    """A torch model's output flattened into ``[(name, tensor), …]`` (``deploy.core.outputs``)."""
    return flatten_outputs(out, lambda v: isinstance(v, torch.Tensor))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``threads`` inside, and put back after (process-wide;
    None leaves it as it is). Threads started inside take it up on their first operator."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise BadInputError(f"`threads` {threads} must be >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TorchRuntime:
    """A PyTorch module in eval mode, run under ``torch.inference_mode`` on the device of its weights.

    ``concurrent``: on the CPU it may run in a thread of its own beside other runtimes (the parity
    check's streams); its module is run by one thread at a time.
    """

    def __init__(self, model: nn.Module, *, name: str = "torch") -> None:
        if model.training:
            raise BadInputError("the model is in training mode: call model.eval() before running or exporting it")
        self.model = model
        first = next(model.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.name = name
        self.concurrent = self.device.type == "cpu"

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Forward ``x`` and return every output by name as float32 numpy, in flattened order."""
        inp = torch.from_numpy(as_float32_nchw(x)).to(self.device)
        with torch.inference_mode():
            out = self.model(inp)
        return {name: t.detach().float().cpu().numpy() for name, t in named_outputs(out)}

    def run(self, x: np.ndarray) -> np.ndarray:
        """Forward ``x`` and return the first output as float32 numpy."""
        return next(iter(self.run_all(x).values()))

    def describe(self) -> dict[str, Any]:
        """Device, threads and library versions."""
        return {
            "runtime": self.name,
            "device": str(self.device),
            "provider": "pytorch-eager",
            "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        }


# ---------------------------------------------------------------- timed: the `torch` bench backend

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TORCH_DEVICES = ("cpu", "cuda")


def require_cuda() -> str:
    """The GPU's name, or BackendUnavailableError (exit 5) when PyTorch sees no CUDA device."""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise BackendUnavailableError(f"PyTorch {torch.__version__} ({build}) sees no CUDA GPU: "
                                      "use the `device` cpu here, or run on a machine with an NVIDIA GPU")
    return torch.cuda.get_device_name(0)


def check_torch_options(device: str, dtype: str, cuda_graph: bool) -> None:
    """BadInputError for an unknown device or dtype, or a CUDA graph off the GPU."""
    if device not in TORCH_DEVICES:
        raise BadInputError(f"`device` {device!r}: choose {' or '.join(TORCH_DEVICES)}")
    if dtype not in TORCH_DTYPES:
        raise BadInputError(f"`dtype` {dtype!r}: choose {', '.join(TORCH_DTYPES)}")
    if cuda_graph and device != "cuda":
        raise BadInputError("`cuda_graph` replays a captured CUDA graph: it needs the `device` cuda")


class TorchBenchRuntime:
    """A module timed where it runs: ``timed_run(x)`` is one forward pass in milliseconds.

    The input is converted (dtype, device, memory format) once per distinct array, outside
    the timing, as the TensorRT runtime stages its input. On CPU the clock is
    ``perf_counter`` around the forward pass. On CUDA the pass is enqueued on the runtime's
    own stream between two CUDA events recorded on that stream, and each run waits for the
    end event (synchronised runs, no overlap); ``cuda_graph`` captures the forward pass once
    per input shape (after a few eager passes on the stream, which CUDA graphs need) and
    replays it. Warm-up is the harness's (``validators.latency``). ``threads`` sets PyTorch's
    intra-op thread count and fp32 on CUDA switches TF32 off (fp32 means fp32, as for the
    TensorRT engines); both settings are process-wide.
    """

    def __init__(self, model: nn.Module, *, device: str = "cpu", dtype: str = "fp32", cuda_graph: bool = False,
                 channels_last: bool = False, threads: int | None = None,
                 sample_shape: tuple[int, ...] | None = None, name: str = "torch") -> None:
        check_torch_options(device, dtype, cuda_graph)
        if model.training:
            raise BadInputError("the model is in training mode: call model.eval() before timing it")
        if threads is not None:
            if threads < 1:
                raise BadInputError(f"`threads` {threads} must be >= 1")
            torch.set_num_threads(threads)  # process-wide: PyTorch has one intra-op pool
        self.sample_shape = sample_shape  # (C, H, W) the model takes, when known
        self.gpu_name = require_cuda() if device == "cuda" else None
        if self.gpu_name is not None and dtype == "fp32":  # fp32 means fp32: no TF32 convolutions or matmuls (process-wide)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.device, self.dtype, self.cuda_graph, self.channels_last = device, dtype, cuda_graph, channels_last
        self.name = name
        self.clock = "cuda_event" if device == "cuda" else "perf_counter"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=device, dtype=TORCH_DTYPES[dtype])
        if channels_last:  # Module.to takes memory_format too; its type stubs do not say so
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.stream = torch.cuda.Stream() if device == "cuda" else None
        self._staged: tuple[Any, torch.Tensor] | None = None
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def _stage(self, x: np.ndarray) -> torch.Tensor:
        if self._staged is None or self._staged[0] is not x:
            t = torch.from_numpy(as_float32_nchw(x)).to(device=self.device, dtype=TORCH_DTYPES[self.dtype])
            self._staged = (x, t.contiguous(memory_format=self.memory_format))
            if self.stream is not None:
                torch.cuda.synchronize()
        return self._staged[1]

    def _forward(self, t: torch.Tensor) -> torch.Tensor:
        """The first output (what is timed and what ``run`` returns)."""
        with torch.inference_mode():
            out = self.model(t)
        return named_outputs(out)[0][1]

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name as float32 numpy (eager, outside any CUDA graph)."""
        with torch.inference_mode():
            out = self.model(self._stage(x))
        return {name: t.float().cpu().numpy() for name, t in named_outputs(out)}

    def _replay(self, t: torch.Tensor) -> torch.Tensor:
        """Replay the graph captured for ``t``'s shape (capturing it first)."""
        key = tuple(t.shape)
        if key not in self._graphs:
            static_in = t.clone()
            torch.cuda.synchronize()  # the copy is on the default stream; the capture stream reads it
            with torch.cuda.stream(self.stream):
                for _ in range(3):  # eager passes on the capture stream: lazy allocations and autotuning happen here
                    self._forward(static_in)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        if static_in.data_ptr() != t.data_ptr():
            static_in.copy_(t)
        graph.replay()
        return static_out

    def _enqueue(self, t: torch.Tensor) -> torch.Tensor:
        return self._replay(t) if self.cuda_graph else self._forward(t)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Forward ``x`` and return the first output as float32 numpy (waits for the GPU)."""
        t = self._stage(x)
        if self.stream is None:
            return self._forward(t).float().numpy()
        with torch.cuda.stream(self.stream):
            out = self._enqueue(t).float()
        self.stream.synchronize()
        return out.cpu().numpy()

    def timed_run(self, x: np.ndarray) -> float:
        """One forward pass, in milliseconds (CUDA events on the work stream on a GPU)."""
        t = self._stage(x)
        if self.stream is None:
            start_ns = time.perf_counter_ns()
            self._forward(t)
            return (time.perf_counter_ns() - start_ns) / 1e6
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream):
            start.record(self.stream)
            self._enqueue(t)
            end.record(self.stream)
        end.synchronize()
        return float(start.elapsed_time(end))

    def describe(self) -> dict[str, Any]:
        """Device, dtype, memory format, graph replay, threads and versions."""
        return {
            "runtime": self.name, "device": self.gpu_name or str(self.device), "dtype": self.dtype,
            "provider": f"pytorch-{'cuda-graph' if self.cuda_graph else 'eager'}-{self.device}",
            "channels_last": self.channels_last, "cuda_graph": self.cuda_graph, "clock": self.clock,
            "threads": torch.get_num_threads() if self.device == "cpu" else None,
            "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__,
                         "python": platform.python_version()},
        }
