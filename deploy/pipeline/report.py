"""The typed report of an export or a validation, and its JSON form (``MODEL.report.json``).

Each pipeline step fills one field with its own result object (``FoldReport``,
``OnnxExport``, ``SimplifyResult``, ``GraphReport``, ``FoldCoverageReport``,
``ParityReport``); ``to_dict``
writes the JSON the report files hold. The CLI prints from the objects, never from the
JSON.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.core.environment import device_description, versions
from deploy.core.threads import ThreadPlan
from deploy.fold.fold import FoldReport
from exporters.onnx import OnnxExport
from exporters.simplify import GraphDiff, SimplifyResult
from validators.accuracy import AccuracyReport
from validators.fold_coverage import FoldCoverageReport
from validators.graph import GraphReport
from validators.parity import ParityReport


@dataclass
class EngineCheck:
    """A TensorRT engine built with an export: its file, the metadata written beside it
    (``engine.plan.json``) and its parity against ONNX Runtime."""

    path: Path
    metadata: dict[str, Any]
    parity: ParityReport

    @property
    def notes(self) -> list[str]:
        """What the build wants the user to know (a replaced timing cache, a precision fallback)."""
        return list(self.metadata.get("notes", []))

    def summary(self) -> str:
        """One line: the engine's parity with ONNX Runtime."""
        c = self.parity.candidates[0]
        top1 = f"{100 * c.top1_agreement:.1f} %" if c.top1_agreement is not None else "n/a"
        decisive = sum(o.top1_rows for o in c.outputs)
        return (f"TensorRT engine {self.path}: vs onnxruntime max rel err {c.max_rel_err:.3g}, top-1 {top1} on "
                f"{decisive} decisive rows ({c.top1_excluded} near-ties excluded; tolerance "
                f"{self.parity.tolerance['name']})")

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "metadata": self.metadata, "parity": self.parity.to_dict()}


@dataclass
class HeldOutAccuracy:
    """Accuracy of each runtime of an export (training form, folded, ONNX Runtime) on held-out data."""

    data: str
    images: int
    reports: dict[str, AccuracyReport]  # by runtime: training_form, folded, onnxruntime
    images_per_s: dict[str, float]
    seconds: float = 0.0  # the whole evaluation, data decoding included

    def line(self) -> str:
        """``training-form 98.61 % [97.1, 99.3] | …`` for the export's summary."""
        return " | ".join(f"{name.replace('_', '-')} {r.top1.text()}" for name, r in self.reports.items())

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "images": self.images, **{n: r.top1.value for n, r in self.reports.items()},
                "reports": {n: r.to_dict() for n, r in self.reports.items()}, "images_per_s": dict(self.images_per_s),
                "seconds": self.seconds}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class RunReport:
    """Everything one `deploy export` or `deploy validate` run measured and decided."""

    tool: str
    source: dict[str, Any]  # the checkpoint: path and what it holds (``LoadedModel.describe``)
    parity: ParityReport
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    fold: FoldReport | None = None
    export: OnnxExport | None = None
    simplify: SimplifyResult | None = None
    rewrites: GraphDiff | None = None  # export: the graph without the deploy rewrites -> with them
    graph: GraphReport | None = None
    fold_coverage: FoldCoverageReport | None = None
    accuracy: HeldOutAccuracy | None = None
    onnx: dict[str, Any] | None = None  # validate: the ONNX file it checked
    engine: EngineCheck | None = None
    outputs: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    threads: ThreadPlan | None = None  # the CPUs the run found free, and so the threads it ran on
    created: str = field(default_factory=_now)
    versions: dict[str, str] = field(default_factory=versions)
    device: dict[str, Any] = field(default_factory=device_description)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document; sections a run did not have are left out (export) or null."""
        doc: dict[str, Any] = {
            "tool": self.tool, "created": self.created, "versions": self.versions, "device": self.device,
            "input": self.source,
        }
        if self.onnx is not None:
            doc["onnx"] = self.onnx
        if self.options:
            doc["options"] = self.options
        doc.update({
            "seeds": {"parity": self.seed, "fold_probe": self.seed},
            "tolerance": self.parity.tolerance,
            "fold": self.fold.to_dict() if self.fold else None,
        })
        if self.tool.endswith("export"):
            doc.update({
                "export": self.export.to_dict() if self.export else None,
                "simplify": self.simplify.to_dict() if self.simplify else None,
                "rewrites": self.rewrites.to_dict() if self.rewrites else None,
                "graph": self.graph.to_dict() if self.graph else None,
                "fold_coverage": self.fold_coverage.to_dict() if self.fold_coverage else None,
            })
        doc.update({"parity": self.parity.to_dict(), "accuracy": self.accuracy.to_dict() if self.accuracy else None})
        if self.seconds:
            doc["seconds"] = dict(self.seconds)
        if self.parity.seconds is not None:
            doc["parity_seconds"] = asdict(self.parity.seconds)
        if self.threads is not None:
            doc["threads"] = self.threads.to_dict()
        if self.engine is not None:
            doc["engine"] = self.engine.to_dict()
        if self.outputs is not None:
            doc["outputs"] = self.outputs
        return doc
