"""A PyTorch module behind the same ``run(x) -> output`` interface as the other runtimes."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy.errors import BadInputError
from validators.runtimes import as_float32_nchw


class TorchRuntime:
    """A PyTorch module in eval mode, run under ``torch.inference_mode`` on the device of its weights."""

    def __init__(self, model: nn.Module, *, name: str = "torch") -> None:
        if model.training:
            raise BadInputError("the model is in training mode: call model.eval() before running or exporting it")
        self.model = model
        first = next(model.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.name = name

    def run(self, x: np.ndarray) -> np.ndarray:
        """Forward ``x`` and return the first output as float32 numpy."""
        inp = torch.from_numpy(as_float32_nchw(x)).to(self.device)
        with torch.inference_mode():
            out = self.model(inp)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """Device, threads and library versions."""
        return {
            "runtime": self.name,
            "device": str(self.device),
            "provider": "pytorch-eager",
            "threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        }
