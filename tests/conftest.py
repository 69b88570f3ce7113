"""Shared pytest hooks: `gpu`-marked tests run only where TensorRT imports and CUDA is available."""

from __future__ import annotations

import pytest


def _gpu_ready() -> tuple[bool, str]:
    from exporters.tensorrt import tensorrt_available

    return tensorrt_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    ok, reason = _gpu_ready()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {reason}")
    for item in gpu_items:
        item.add_marker(skip)
