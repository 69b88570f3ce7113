"""convdeploy: fold, export, verify and time CNNs built with five research convolutions.

The Python API — ``from deploy import export, evaluate, fold_model, build_model`` (and ``ExportResult``)
— lives in ``deploy.api``. It is imported on first use of one of those names (PEP 562
``__getattr__``), so that ``import deploy`` and ``import deploy.core.errors`` do not import torch.
"""

from __future__ import annotations

from typing import Any

from deploy.version import __version__

__all__ = ["ExportResult", "__version__", "build_model", "evaluate", "export", "fold_model"]
_API = ("ExportResult", "build_model", "evaluate", "export", "fold_model")


def __getattr__(name: str) -> Any:
    """The API's names, from ``deploy.api`` imported on first use (the one lazy project import)."""
    if name in _API:
        from deploy import api  # noqa: PLC0415 - lazy on purpose: `import deploy` must not import torch

        return getattr(api, name)
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")
