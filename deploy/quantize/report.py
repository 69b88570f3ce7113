"""The typed record of one `deploy quantize`: data, recipe, every keep-float step, the gate, the files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from deploy.quantize.gate import GateResult
from deploy.quantize.sensitivity import NodeSensitivity
from validators.accuracy import Interval

QUANTIZE_FORMAT = "convdeploy-quantize/1"
#: the ONNX metadata key of the quantization record in the INT8 file
METADATA_KEY = "convdeploy.quantization"


@dataclass(frozen=True)
class KeepStep:
    """One quantization of the keep-float loop: the node it added to the float ones (None: the first
    quantization), that node's SQNR, and what the gate then measured."""

    added: str | None
    module: str | None
    sqnr_db: float | None
    kept: tuple[str, ...]
    gate: GateResult

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "module": self.module, "sqnr_db": self.sqnr_db, "kept": list(self.kept),
                "gate": self.gate.to_dict()}


@dataclass(frozen=True)
class DataRecord:
    """A data set as it was used: its description and how many images."""

    description: str
    images: int


@dataclass
class QuantizeReport:
    """Everything `deploy quantize` did and measured (``to_dict()`` is the report JSON)."""

    model: str
    target: str
    method: str
    calib: DataRecord
    eval: DataRecord
    recipe: dict[str, Any] | None
    fp32_top1: Interval | None
    steps: list[KeepStep]
    sensitive: list[NodeSensitivity]
    output_sqnr: dict[str, float] = field(default_factory=dict)
    quantized_nodes: int = 0
    float_nodes: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> KeepStep:
        return self.steps[-1]

    @property
    def passed(self) -> bool:
        return self.final.gate.passed

    @property
    def kept_float(self) -> tuple[str, ...]:
        return self.final.kept

    def to_dict(self) -> dict[str, Any]:
        return {"format": QUANTIZE_FORMAT, "model": self.model, "target": self.target, "method": self.method,
                "calib": asdict(self.calib), "eval": asdict(self.eval), "recipe": self.recipe,
                "fp32_top1": asdict(self.fp32_top1) if self.fp32_top1 else None, "passed": self.passed,
                "gate": self.final.gate.to_dict(), "kept_float": list(self.kept_float),
                "steps": [s.to_dict() for s in self.steps], "sensitive": [asdict(s) for s in self.sensitive],
                "output_sqnr_db": self.output_sqnr, "quantized_nodes": self.quantized_nodes,
                "float_nodes": self.float_nodes, "bytes": self.sizes, "seconds": self.seconds,
                "warnings": list(self.warnings), "outputs": self.outputs}

    def metadata(self) -> dict[str, Any]:
        """What the INT8 file records about how it was made."""
        return {"target": self.target, "method": self.method, "calib": self.calib.description,
                "calib_images": self.calib.images, "kept_float": list(self.kept_float)}
