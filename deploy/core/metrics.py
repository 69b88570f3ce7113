"""Error metrics of one output against its reference, and the tolerance that judges them.

Error conventions: ``max_abs_err = max|out - ref|``; ``max_rel_err = max_abs_err / max|ref|``
(relative to the largest reference magnitude, so near-zero logits do not blow it up);
cosine similarity per batch row of the flattened outputs, minimum over rows; top-1
agreement = fraction of rows whose arg-max class is the same. Top-1 agreement judges only
outputs that look like class scores (``looks_like_class_scores``: 2-D, more than one
column); boxes, feature maps and single scores are judged on the error bound and cosine.
``decisive_top1`` counts top-1 agreement only on the rows whose reference top-1/top-2
margin exceeds a bound (the tolerance's error bound): below it a tolerated error may swap
the two classes, so such a near-tie says nothing about the export and is excluded (and counted).

Non-finite values cannot blind a verdict: NaN and ±inf must sit where the reference has the
very same value (``nonfinite_mismatch``), and the bound, the errors, the margins and the cosines
are computed on the finite values. A row pointing away from the reference (cosine < 0) never
passes, whatever the bound.

A foundation module: the exporter's simplification check, the parity gate and the
first-divergence search all measure with these, and none of them imports another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from deploy.core.errors import BadInputError, ParityError


def looks_like_class_scores(shape: tuple[int, ...]) -> bool:
    """True for an output of shape (batch, classes) with more than one class: top-1 means something."""
    return len(shape) == 2 and shape[1] > 1


def nonfinite_mismatches(ref: np.ndarray, out: np.ndarray) -> int:
    """How many positions are non-finite in one array and not the same non-finite value in the other
    (NaN where NaN, +inf where +inf, -inf where -inf)."""
    same = (np.isnan(ref) & np.isnan(out)) | (np.isinf(ref) & (ref == out))
    return int(np.sum(~(np.isfinite(ref) & np.isfinite(out)) & ~same))


def _finite_rows(a: np.ndarray) -> np.ndarray:
    """``a`` as (rows, features), its non-finite values zeroed."""
    rows = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    return np.where(np.isfinite(rows), rows, 0.0)


def _row_cosines(rows_ref: np.ndarray, rows_out: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows_ref, axis=1) * np.linalg.norm(rows_out, axis=1)
    dots = np.sum(rows_ref * rows_out, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(dots == 0, 1.0, 0.0))


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Error metrics of ``out`` against ``ref`` (same shape, batch on axis 0).

    Non-finite values never blind the metrics: they must sit at the same positions with the
    same value in both (``nonfinite_mismatch`` counts where they do not), and the errors, the
    reference's max magnitude and the cosines are computed on the finite values only. With
    ``tol``, rows whose reference lies within the error bound of zero (no direction to judge)
    are left out of the cosine.
    """
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ParityError(f"output shapes differ: reference {ref.shape} vs candidate {out.shape}: the exported graph is wrong")
    if ref.size == 0:  # nothing to differ
        return {"max_abs_err": 0.0, "max_ref": 0.0, "max_rel_err": 0.0, "min_cosine": 1.0, "top1_agreement": 1.0,
                "rows": int(ref.shape[0]) if ref.ndim else 1, "nonfinite_mismatch": 0}
    both = np.isfinite(ref) & np.isfinite(out)
    diff = np.abs(np.subtract(out, ref, out=np.zeros_like(ref), where=both))
    mismatched = nonfinite_mismatches(ref, out)
    max_abs = math.inf if mismatched else (float(diff.max()) if diff.size else 0.0)
    finite_ref = np.abs(ref[np.isfinite(ref)])
    max_ref = float(finite_ref.max()) if finite_ref.size else 0.0
    max_rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else math.inf)
    rows_ref, rows_out = _finite_rows(ref), _finite_rows(out)
    cos = _row_cosines(rows_ref, rows_out)
    top1 = _argmax_rows(ref) == _argmax_rows(out)
    return {
        "max_abs_err": max_abs,
        "max_ref": max_ref,
        "max_rel_err": max_rel,
        "min_cosine": float(cos.min()) if cos.size else 1.0,
        "top1_agreement": float(top1.mean()) if top1.size else 1.0,
        "rows": int(rows_ref.shape[0]),
        "nonfinite_mismatch": mismatched,
    }


def _argmax_rows(a: np.ndarray) -> np.ndarray:
    """Per row, the index of the largest value (NaN counts as the smallest)."""
    rows = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    return np.argmax(np.nan_to_num(rows, nan=-np.inf, posinf=np.inf, neginf=-np.inf), axis=1)


def top1_margins(ref: np.ndarray) -> np.ndarray:
    """Per batch row of ``ref``: its largest value minus its second largest, NaN and -inf ignored
    (inf when fewer than two values are left, or when +inf wins alone; 0 for two +inf)."""
    rows = np.asarray(ref, dtype=np.float64).reshape(np.shape(ref)[0], -1) if np.ndim(ref) else np.zeros((1, 1))
    if rows.shape[1] < 2:
        return np.full(rows.shape[0], np.inf)
    ranked = np.where(np.isnan(rows), -np.inf, rows)
    top2 = np.partition(ranked, -2, axis=1)[:, -2:]
    with np.errstate(invalid="ignore"):
        margins = top2[:, 1] - top2[:, 0]
    margins = np.where(np.isneginf(top2[:, 0]), np.inf, margins)  # fewer than two values that can win
    return np.where(np.isnan(margins), 0.0, margins)  # two +inf: a tie


def decisive_top1(ref: np.ndarray, out: np.ndarray, margin: float) -> tuple[int, int]:
    """(rows whose arg-max agrees, rows counted): only rows whose reference top-1/top-2 margin (among
    its finite values) exceeds ``margin`` are counted; the others are near-ties within the tolerance."""
    rows_ref = np.asarray(ref, dtype=np.float64).reshape(np.shape(ref)[0], -1)
    rows_out = np.asarray(out, dtype=np.float64).reshape(np.shape(out)[0], -1)
    counted = top1_margins(rows_ref) > margin
    agree = _argmax_rows(rows_ref) == _argmax_rows(rows_out)
    return int(np.sum(agree & counted)), int(np.sum(counted))


@dataclass(frozen=True)
class Tolerance:
    """Pass rule: the same non-finite values as the reference, ``max_abs_err <= atol + rtol * max|ref|``
    (finite values), ``min_cosine`` >= 0 on the rows with a direction, and top-1 agreement >= ``min_top1``."""

    rtol: float = 1e-4
    atol: float = 0.0
    min_top1: float = 1.0
    name: str = "float32"
    min_cosine: float = 0.0

    @classmethod
    def for_precision(cls, precision: str) -> "Tolerance":
        """Defaults: float32 = 1e-4 * max|ref| and 100 % top-1; fp16 = 1e-2 * max|ref| and 99 % top-1."""
        key = precision.lower()
        if key in ("fp32", "float32"):
            return cls()
        if key in ("fp16", "float16", "half"):
            return cls(rtol=1e-2, atol=0.0, min_top1=0.99, name="float16")
        raise BadInputError(f"unknown precision {precision!r}: use fp32 or fp16")

    def bound(self, max_ref: float) -> float:
        """The largest allowed absolute error for an output whose max magnitude is ``max_ref``."""
        return self.atol + self.rtol * max_ref

    def violations(self, metrics: Mapping[str, float], *, check_top1: bool = True) -> list[str]:
        """Reasons ``metrics`` (from ``compare``) fail this tolerance; empty when it passes."""
        reasons = []
        mismatched = int(metrics.get("nonfinite_mismatch", 0))
        if mismatched:
            reasons.append(f"{mismatched} NaN/inf value(s) where the reference has another value")
        bound = self.bound(metrics["max_ref"])
        if not metrics["max_abs_err"] <= bound:
            reasons.append(
                f"max abs error {metrics['max_abs_err']:.3g} > {bound:.3g} "
                f"(= {self.atol:g} + {self.rtol:g} * max|ref| {metrics['max_ref']:.3g})"
            )
        if not metrics.get("min_cosine", 1.0) >= self.min_cosine:
            reasons.append(f"min cosine {metrics['min_cosine']:.3g} < {self.min_cosine:g} (a row points away from "
                           "the reference)")
        if check_top1 and not metrics["top1_agreement"] >= self.min_top1:
            reasons.append(f"top-1 agreement {100 * metrics['top1_agreement']:.1f} % < {100 * self.min_top1:.1f} %")
        return reasons
