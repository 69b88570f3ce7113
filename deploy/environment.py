"""Where and with what the numbers were measured: recorded in every report."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from deploy import __version__


def versions() -> dict[str, str]:
    """Tool and library versions recorded in every report."""
    import onnx
    import onnxruntime

    found = {"convdeploy": __version__, "python": sys.version.split()[0], "torch": torch.__version__}
    found.update({"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__})
    try:
        import onnxsim

        found["onnxsim"] = getattr(onnxsim, "__version__", "unknown")
    except ImportError:
        found["onnxsim"] = "not installed"
    return found


def device_description() -> dict[str, Any]:
    """Where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
