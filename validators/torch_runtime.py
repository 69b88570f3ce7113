"""A PyTorch module behind the same ``run_all(x) -> {name: output}`` interface as the other runtimes.

Tuple, list, dict and nested outputs are flattened and named as the exporter names the
ONNX graph's outputs (``deploy.outputs``).
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy.errors import BadInputError
from deploy.outputs import flatten_outputs
from validators.runtimes import as_float32_nchw


def named_outputs(out: object) -> list[tuple[str, torch.Tensor]]:
    """A torch model's output flattened into ``[(name, tensor), …]`` (``deploy.outputs``)."""
    return flatten_outputs(out, lambda v: isinstance(v, torch.Tensor))


class TorchRuntime:
    """A PyTorch module in eval mode, run under ``torch.inference_mode`` on the device of its weights."""

    def __init__(self, model: nn.Module, *, name: str = "torch") -> None:
        if model.training:
            raise BadInputError("the model is in training mode: call model.eval() before running or exporting it")
        self.model = model
        first = next(model.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.name = name

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
