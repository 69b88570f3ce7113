"""The accuracy gate of an INT8 model: it against its fp32 model on held-out images.

Both files run on ONNX Runtime on the very same batches of the evaluation images (the loaders and
the preprocessing of `deploy eval`); the fp32 predictions are computed once and every INT8
candidate of the keep-float loop is scored against them. What is judged:

* with labels, the top-1 drop ``fp32 - int8`` in percentage points, with its paired bootstrap
  interval, top-1 agreement (Wilson) and McNemar's exact p (``validators.accuracy``);
* without labels, the share of images whose top-1 class changes, which bounds the drop from
  above (an image can only lose its correct label by changing class), against the same limit.

Per-output SQNR (``deploy.quantize.sensitivity.sqnr_db``) of every graph output on the first
images says how close the raw outputs stay, beyond the argmax.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.core.progress import SILENT, Progress
from deploy.data.datasets import DataSource, batches
from deploy.data.preprocess import Recipe
from deploy.evaluation.run import EvalOptions, open_artifact
from deploy.quantize.sensitivity import sqnr_db
from validators.accuracy import Comparison, Interval, Scores, compare_predictions, score, wilson

#: images whose raw outputs are compared (per-output SQNR)
SQNR_IMAGES = 256


@dataclass(frozen=True)
class GateResult:
    """One INT8 candidate judged against the fp32 model (module docstring)."""

    int8_top1: Interval | None  # None without labels
    comparison: Comparison
    loss_points: float  # labelled: top-1 drop fp32 - int8; unlabelled: top-1 changes, in points
    measure: str  # "top-1 drop" or "top-1 changes"
    max_drop: float

    @property
    def passed(self) -> bool:
        return self.loss_points <= self.max_drop

    def text(self) -> str:
        c = self.comparison
        interval = f" (int8 - fp32 {c.difference.text()})" if c.difference is not None else ""
        return (f"{self.measure} {self.loss_points:.2f} points{interval}, agreement {c.agreement.text()}, "
                f"limit {self.max_drop:g}")

    def to_dict(self) -> dict[str, Any]:
        return {"int8_top1": asdict(self.int8_top1) if self.int8_top1 else None,
                "comparison": self.comparison.to_dict(), "loss_points": self.loss_points, "measure": self.measure,
                "max_drop": self.max_drop, "passed": self.passed}


def labels_of(source: DataSource) -> np.ndarray | None:
    """The labels of ``source`` in item order, None when it is unlabelled."""
    return np.asarray([i.label for i in source.items], dtype=np.int64) if source.labelled else None


def top1_of(scores: Scores, source: DataSource) -> Interval | None:
    """Top-1 accuracy of ``scores`` on ``source`` with its Wilson interval; None without labels."""
    labels = labels_of(source)
    return None if labels is None else wilson(int((scores.topk[:, 0] == labels).sum()), len(labels))


def predict(model: Path, source: DataSource, recipe: Recipe | None, *, batch: int, threads: int | None,
            progress: Progress = SILENT) -> Scores:
    """Top-5 classes of the ONNX file ``model`` on every image of ``source``."""
    runtime = open_artifact(model, EvalOptions(threads=threads), None)[0]
    return score([runtime], batches(source, recipe, batch), progress=progress, total=len(source.items))[0]


def judge(fp32: Scores, int8: Scores, source: DataSource, max_drop: float, seed: int = 0) -> GateResult:
    """The gate of ``int8`` against ``fp32`` on ``source`` (module docstring)."""
    labels = labels_of(source)
    a, b = int8.topk[:, 0], fp32.topk[:, 0]
    comparison = compare_predictions(a, b, labels, [i.name for i in source.items], seed=seed)
    if labels is None:
        changed = 100.0 * (1.0 - comparison.agreement.value)
        return GateResult(None, comparison, changed, "top-1 changes", max_drop)
    fp32_top1, int8_top1 = top1_of(fp32, source), top1_of(int8, source)
    assert fp32_top1 is not None and int8_top1 is not None
    return GateResult(int8_top1, comparison, 100.0 * (fp32_top1.value - int8_top1.value), "top-1 drop", max_drop)


def output_sqnr(fp32: Path, int8: Path, source: DataSource, recipe: Recipe | None, *, batch: int,
                threads: int | None) -> dict[str, float]:
    """SQNR in dB of every output of ``int8`` against ``fp32`` on the first ``SQNR_IMAGES`` images."""
    first = source.subset(limit=SQNR_IMAGES)
    runtimes = [open_artifact(p, EvalOptions(threads=threads), None)[0] for p in (fp32, int8)]
    collected: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for b in batches(first, recipe, batch):
        ref, got = (rt.run_all(b.x) for rt in runtimes)
        for name in ref:
            collected.setdefault(name, ([], []))
            collected[name][0].append(np.asarray(ref[name]))
            collected[name][1].append(np.asarray(got[name]))
    return {name: sqnr_db(np.concatenate(r), np.concatenate(q)) for name, (r, q) in collected.items()}
