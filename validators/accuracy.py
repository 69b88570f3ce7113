"""Accuracy with its uncertainty, and the comparison of two models on the same images.

Top-1 and top-5 accuracy come with 95 % Wilson score intervals (``scipy.stats.binomtest``), and
per-class top-1 with theirs. Two models evaluated on the same images are compared pairwise:
agreement (same top-1 class), the accuracy difference with a 95 % interval from a paired
bootstrap over the images (``scipy.stats.bootstrap``, seeded), McNemar's exact test on the
discordant pairs (``binomtest`` of the images only one of them gets right), and the images
whose prediction flips. ``score`` runs runtimes over streamed batches and keeps their top-k
classes and times. Paper-agnostic: predictions and labels in, numbers out.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from scipy import stats

from deploy.core.errors import BadInputError
from deploy.core.progress import SILENT, Progress
from deploy.data.datasets import Batch
from validators.runtimes.base import Runtime
from validators.runtimes.streams import SideBySide

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A proportion (or a difference of two) with its confidence interval."""

    value: float
    low: float
    high: float

    def text(self, percent: bool = True) -> str:
        f = 100.0 if percent else 1.0
        return f"{f * self.value:.2f} [{f * self.low:.2f}, {f * self.high:.2f}]" + (" %" if percent else "")

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """The proportion ``successes / n`` with its Wilson score interval (n = 0: an empty interval at 0)."""
    if n == 0:
        return Interval(0.0, 0.0, 0.0)
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high))


@dataclass
class AccuracyReport:
    """Top-1 and top-5 accuracy of one model on labelled images, per class too."""

    images: int
    top1: Interval
    top5: Interval | None  # None with fewer than 5 classes
    per_class: dict[str, Interval] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy_report(top5: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None) -> AccuracyReport:
    """``top5``: (N, k) class indices, best first (k = min(5, classes)); ``labels``: (N,)."""
    n = int(labels.shape[0])
    hit1 = top5[:, 0] == labels
    per_class = {}
    for c in np.unique(labels):
        name = class_names[int(c)] if class_names is not None and int(c) < len(class_names) else str(int(c))
        mask = labels == c
        per_class[name] = wilson(int(hit1[mask].sum()), int(mask.sum()))
    top5_interval = None
    if top5.shape[1] >= 5:
        top5_interval = wilson(int((top5[:, :5] == labels[:, None]).any(axis=1).sum()), n)
    return AccuracyReport(n, wilson(int(hit1.sum()), n), top5_interval, per_class)


@dataclass
class Comparison:
    """Model A against model B on the same images: agreement, the accuracy difference A - B with its
    paired interval, McNemar's exact p-value, and which images flip (A's class, B's class)."""

    images: int
    agreement: Interval
    difference: Interval | None  # None without labels
    mcnemar_p: float | None
    a_only_right: int = 0
    b_only_right: int = 0
    flips: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_predictions(a: np.ndarray, b: np.ndarray, labels: np.ndarray | None, names: Sequence[str],
                        seed: int = 0, confidence: float = CONFIDENCE) -> Comparison:
    """``a``, ``b``: (N,) top-1 classes of two models on the same images (named ``names``)."""
    n = int(a.shape[0])
    same = a == b
    flips = [{"image": names[int(i)], "a": int(a[i]), "b": int(b[i]),
              "label": None if labels is None else int(labels[i])} for i in np.flatnonzero(~same)]
    if labels is None or n == 0:
        return Comparison(n, wilson(int(same.sum()), n), None, None, flips=flips)
    right_a, right_b = (a == labels).astype(np.float64), (b == labels).astype(np.float64)
    a_only, b_only = int(((right_a == 1) & (right_b == 0)).sum()), int(((right_a == 0) & (right_b == 1)).sum())
    diff = float(right_a.mean() - right_b.mean())
    if a_only + b_only == 0:  # no discordant pair: the paired difference is exactly 0 on every resample
        interval, p = Interval(diff, 0.0, 0.0), 1.0
    else:
        boot = stats.bootstrap((right_a, right_b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
                               paired=True, vectorized=True, confidence_level=confidence, n_resamples=4000,
                               method="percentile", random_state=np.random.default_rng(seed))
        interval = Interval(diff, float(boot.confidence_interval.low), float(boot.confidence_interval.high))
        p = float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return Comparison(n, wilson(int(same.sum()), n), interval, p, a_only, b_only, flips)


@dataclass
class Scores:
    """What one runtime predicted on a data set: its top-k classes per image, and the time it ran."""

    name: str
    top: list[np.ndarray] = field(default_factory=list)  # per batch: (B, k) class indices, best first
    seconds: float = 0.0
    images: int = 0
    classes: int = 0

    @property
    def topk(self) -> np.ndarray:
        return np.concatenate(self.top) if self.top else np.zeros((0, 1), dtype=np.int64)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _top_classes(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores per row, best first (NaN ranks last)."""
    scores = np.nan_to_num(np.asarray(logits, dtype=np.float64), nan=-np.inf)
    part = np.argpartition(-scores, kth=min(k, scores.shape[1]) - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


class _FirstOutput:
    """A runtime seen through ``run``: its first output, for side-by-side runs."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime, self.name = runtime, getattr(runtime, "name", type(runtime).__name__)
        self.concurrent = getattr(runtime, "concurrent", False)

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.runtime.run(x))

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"first": self.run(x)}

    def describe(self) -> dict[str, Any]:
        return self.runtime.describe()


def score(runtimes: Sequence[Runtime], batches: Iterable[Batch], *, k: int = 5,
          progress: Progress = SILENT, total: int | None = None, slots: int = 1) -> list[Scores]:
    """Run every runtime on every batch (the same inputs) and keep its top-``k`` classes; the data are
    decoded once and streamed (a few batches in memory). Each runtime's ``run`` must return class scores
    (batch, classes); its time is measured around ``run`` alone. With ``slots`` > 1 the runtimes run side
    by side (``validators.runtimes.streams``)."""
    results = [Scores(getattr(rt, "name", type(rt).__name__)) for rt in runtimes]
    progress.task("evaluating", total)
    pending: list[Batch] = []

    def inputs() -> Iterator[np.ndarray]:
        for batch in batches:
            pending.append(batch)
            yield batch.x

    runs = SideBySide([_FirstOutput(rt) for rt in runtimes], inputs(), slots)
    with contextlib.closing(iter(runs)) as outcomes:
        for _, got in outcomes:
            batch = pending.pop(0)
            for outcome, result in zip(got, results):
                if outcome.error is not None:
                    raise outcome.error
                assert outcome.outputs is not None  # an outcome holds outputs or an error
                _add_scores(result, outcome.outputs["first"], len(batch.items), k)
            progress.update(advance=len(batch.items))
    for result, seconds in zip(results, runs.seconds):
        result.seconds = seconds
    return results


def _add_scores(result: Scores, logits: np.ndarray, images: int, k: int) -> None:
    if logits.ndim != 2 or logits.shape[0] != images:
        raise BadInputError(f"{result.name} returns {tuple(logits.shape)} for a batch of {images}: "
                            "evaluation needs class scores (batch, classes) as the first output")
    result.classes = int(logits.shape[1])
    result.top.append(_top_classes(logits, min(k, result.classes)))
    result.images += images
