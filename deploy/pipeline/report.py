"""The typed report of an export or a validation, and its JSON form (``MODEL.report.json``).

Each pipeline step fills one field with its own result object (``FoldReport``,
``ExportResult``, ``SimplifyResult``, ``GraphReport``, ``FoldCoverageReport``,
``ParityReport``); ``to_dict``
writes the JSON the report files hold. The CLI prints from the objects, never from the
JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from deploy.core.environment import device_description, versions
from deploy.fold.fold import FoldReport
from exporters.onnx import ExportResult, GraphDiff, SimplifyResult
from validators.fold_coverage import FoldCoverageReport
from validators.graph import GraphReport
from validators.parity import ParityReport


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
    export: ExportResult | None = None
    simplify: SimplifyResult | None = None
    rewrites: GraphDiff | None = None  # export: the graph without the deploy rewrites -> with them
    graph: GraphReport | None = None
    fold_coverage: FoldCoverageReport | None = None
    accuracy: dict[str, Any] | None = None
    onnx: dict[str, Any] | None = None  # validate: the ONNX file it checked
    engine: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
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
        doc.update({"parity": self.parity.to_dict(), "accuracy": self.accuracy})
        if self.seconds:
            doc["seconds"] = dict(self.seconds)
        if self.engine is not None:
            doc["engine"] = self.engine
        if self.outputs is not None:
            doc["outputs"] = self.outputs
        return doc
