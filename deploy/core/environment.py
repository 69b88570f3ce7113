"""Where and with what the numbers were measured: recorded in every report.

Torch-free on purpose: ONNX-only commands record their environment without paying for
``import torch``; torch's version is read from its installed metadata, and its thread
count only when some other part of the run has imported it already.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

from deploy.version import __version__

_LIBRARIES = ("torch", "numpy", "onnx", "onnxruntime", "onnxsim")


def _installed(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Tool and library versions recorded in every report."""
    found = {"convdeploy": __version__, "python": sys.version.split()[0]}
    found.update({name: _installed(name) for name in _LIBRARIES})
    return found


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return name


def host_device() -> str:
    """CPU model name and logical core count, for tables: ``AMD EPYC (2 logical cores)``."""
    return f"{cpu_name()} ({os.cpu_count()} logical cores)"


def device_description() -> dict[str, Any]:
    """Where the numbers were measured."""
    found: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()}
    torch = sys.modules.get("torch")
    if torch is not None:
        found["torch_threads"] = torch.get_num_threads()
    return found
