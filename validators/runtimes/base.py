"""The one interface every runtime implements: ONNX Runtime, PyTorch and TensorRT.

Every runtime takes one float32 NCHW ``np.ndarray``. ``run_all`` returns every output of the
model by name (``deploy.core.outputs``: the ONNX graph's output names are the flattened torch
output names), in graph order; ``run`` returns the first (timing and accuracy need one).
``describe`` says where and how it runs (device, provider, threads, versions) for reports. A
runtime that keeps its own clock (CUDA events) also offers ``timed_run(x) -> milliseconds``
and ``clock``; the harness (``validators.latency``) times the others with ``perf_counter``.
A runtime with ``concurrent = True`` may run in a thread of its own while other runtimes run
in theirs (``validators.runtimes.streams``); one without it runs in the caller's thread.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Runtime(Protocol):
    """A model that runs: parity compares ``run_all``, the harness times ``run``."""

    name: str

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...
