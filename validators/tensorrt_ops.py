"""TensorRT ONNX-parser operator support matrix, shipped as package data.

``validators/data/tensorrt_onnx_ops.json`` is the table of onnx/onnx-tensorrt
``docs/operators.md`` (TensorRT 10.0, updated to 10.15: opsets 9-24) converted to JSON: for every
operator, whether the parser supports it, the supported types and the documented
restrictions. It is read from inside the installed package, never from ../shared.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class TrtOpSupport:
    """One row of the support matrix."""

    op: str
    supported: bool
    types: tuple[str, ...]
    restrictions: str


@dataclass(frozen=True)
class TrtOpTable:
    """The whole matrix plus where it came from."""

    tensorrt_version: str
    opset_min: int
    opset_max: int
    source: str
    ops: dict[str, TrtOpSupport]

    def lookup(self, op_type: str) -> TrtOpSupport | None:
        """The row for ``op_type`` (default ONNX domain), or None if the table omits it."""
        return self.ops.get(op_type)


@functools.lru_cache(maxsize=1)
def load_tensorrt_ops() -> TrtOpTable:
    """Load the packaged TensorRT operator table (cached)."""
    text = resources.files("validators").joinpath("data/tensorrt_onnx_ops.json").read_text()
    raw = json.loads(text)
    ops = {
        name: TrtOpSupport(name, bool(row["supported"]), tuple(row["types"]), row["restrictions"])
        for name, row in raw["ops"].items()
    }
    return TrtOpTable(raw["tensorrt_version"], int(raw["opset_min"]), int(raw["opset_max"]), raw["source"], ops)
