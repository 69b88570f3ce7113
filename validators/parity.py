"""Numerical parity between runtimes (DESIGN.md, validators/parity.py; issue 3, step 6).

``compare`` measures one output pair; ``check_parity`` runs a reference runtime and any
number of candidates on K seeded random inputs at batch 1 and at a batch > 1 and applies a
``Tolerance``; on failure ``first_divergence`` (validators/divergence.py) names the first
module whose intermediate output differs between PyTorch and the ONNX graph.

Error conventions: ``max_abs_err = max|out - ref|``; ``max_rel_err = max_abs_err / max|ref|``
(relative to the largest reference magnitude, so near-zero logits do not blow it up);
cosine similarity per batch row of the flattened outputs, minimum over rows; top-1
agreement = fraction of rows whose arg-max class is the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from deploy.errors import BadInputError, ParityError


class Runtime(Protocol):
    """Anything with a name and ``run(x) -> y`` (validators/runtimes.py)."""

    name: str

    def run(self, x: np.ndarray) -> np.ndarray: ...


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Error metrics of ``out`` against ``ref`` (same shape, batch on axis 0)."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ParityError(f"output shapes differ: reference {ref.shape} vs candidate {out.shape}: the exported graph is wrong")
    diff = np.abs(out - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    if diff.size and not np.isfinite(out).all():
        max_abs = math.inf
    max_ref = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / max_ref if max_ref > 0 else (0.0 if max_abs == 0 else math.inf)
    rows_ref = ref.reshape(ref.shape[0], -1) if ref.ndim else ref.reshape(1, 1)
    rows_out = out.reshape(out.shape[0], -1) if out.ndim else out.reshape(1, 1)
    norms = np.linalg.norm(rows_ref, axis=1) * np.linalg.norm(rows_out, axis=1)
    dots = np.sum(rows_ref * rows_out, axis=1)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(dots == 0, 1.0, 0.0))
    cos = np.nan_to_num(cos, nan=-1.0)
    top1 = np.argmax(rows_ref, axis=1) == np.argmax(np.nan_to_num(rows_out, nan=-np.inf), axis=1)
    return {
        "max_abs_err": max_abs,
        "max_ref": max_ref,
        "max_rel_err": max_rel,
        "min_cosine": float(cos.min()) if cos.size else 1.0,
        "top1_agreement": float(top1.mean()) if top1.size else 1.0,
        "rows": int(rows_ref.shape[0]),
    }


@dataclass(frozen=True)
class Tolerance:
    """Pass rule: ``max_abs_err <= atol + rtol * max|ref|`` and top-1 agreement >= ``min_top1``."""

    rtol: float = 1e-4
    atol: float = 0.0
    min_top1: float = 1.0
    name: str = "float32"

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
        bound = self.bound(metrics["max_ref"])
        if not metrics["max_abs_err"] <= bound:
            reasons.append(
                f"max abs error {metrics['max_abs_err']:.3g} > {bound:.3g} "
                f"(= {self.atol:g} + {self.rtol:g} * max|ref| {metrics['max_ref']:.3g})"
            )
        if check_top1 and not metrics["top1_agreement"] >= self.min_top1:
            reasons.append(f"top-1 agreement {100 * metrics['top1_agreement']:.1f} % < {100 * self.min_top1:.1f} %")
        return reasons


@dataclass
class CandidateParity:
    """Aggregated metrics of one candidate runtime over every input."""

    name: str
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    min_cosine: float = 1.0
    top1_agreement: float = 1.0
    runs: int = 0
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    describe: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParityReport:
    """Everything ``check_parity`` measured; ``passed`` only if every candidate passed."""

    reference: str
    candidates: list[CandidateParity]
    tolerance: dict[str, Any]
    input_shape: tuple[int, ...]
    batches: tuple[int, ...]
    samples: int
    seed: int
    reference_describe: dict[str, Any] = field(default_factory=dict)
    first_divergence: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        """One line per candidate, for logs and error messages."""
        lines = []
        for c in self.candidates:
            verdict = "ok" if c.passed else "FAILED: " + "; ".join(c.reasons)
            lines.append(
                f"{self.reference} vs {c.name}: max abs {c.max_abs_err:.3g}, max rel {c.max_rel_err:.3g}, "
                f"min cos {c.min_cosine:.6f}, top-1 {100 * c.top1_agreement:.1f} % -> {verdict}"
            )
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise ``ParityError`` (exit 3) naming the first failing candidate and the diverging layer."""
        for c in self.candidates:
            if not c.passed:
                where = f"; first diverging layer: {self.first_divergence}" if self.first_divergence else ""
                raise ParityError(
                    f"parity failed for {c.name} vs {self.reference}: {'; '.join(c.reasons)}{where}: "
                    "do not ship this export (re-export, or loosen --atol/--rtol only if the error is expected)"
                )


def seeded_inputs(input_shape: Sequence[int], batches: Iterable[int], samples: int, seed: int) -> list[np.ndarray]:
    """``samples`` standard-normal float32 inputs per batch size, from one seeded generator."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in input_shape)
    return [rng.standard_normal((b, *shape)).astype(np.float32) for b in batches for _ in range(samples)]


def check_parity(
    reference_runtime: Runtime,
    candidates: Sequence[Runtime],
    input_shape: Sequence[int],
    samples: int = 8,
    batches: Sequence[int] = (1, 3),
    seed: int = 0,
    tol: Tolerance | None = None,
) -> ParityReport:
    """Run every candidate against the reference on seeded inputs; never raises on a mismatch.

    ``input_shape`` is (C, H, W). An exception inside a candidate (e.g. a fixed-batch graph
    fed batch 3) is recorded as a failure with its first line.
    """
    tol = tol or Tolerance()
    if samples < 1 or not batches or any(b < 1 for b in batches):
        raise BadInputError(f"need samples >= 1 and batch sizes >= 1, got samples={samples}, batches={tuple(batches)}")
    if len(input_shape) != 3:
        raise BadInputError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    results = [CandidateParity(name=c.name, describe=_describe(c)) for c in candidates]
    agree = [0] * len(candidates)
    rows = [0] * len(candidates)
    crashed: set[tuple[int, int]] = set()  # (candidate, batch) pairs that raised: run once, not K times
    for x in seeded_inputs(input_shape, batches, samples, seed):
        ref = reference_runtime.run(x)
        for i, cand in enumerate(candidates):
            res = results[i]
            if (i, x.shape[0]) in crashed:
                continue
            try:
                out = cand.run(x)
                m = compare(ref, out)
            except Exception as exc:  # recorded, reported, never silent
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                res.passed = False
                res.reasons.append(f"failed to run at batch {x.shape[0]}: {msg}")
                crashed.add((i, x.shape[0]))
                continue
            res.runs += 1
            res.max_abs_err = max(res.max_abs_err, m["max_abs_err"])
            res.max_rel_err = max(res.max_rel_err, m["max_rel_err"])
            res.min_cosine = min(res.min_cosine, m["min_cosine"])
            agree[i] += round(m["top1_agreement"] * m["rows"])
            rows[i] += m["rows"]
            bad = tol.violations(m, check_top1=False)
            if bad:
                res.passed = False
                if not any(r.startswith("max abs") for r in res.reasons):
                    res.reasons.append(bad[0] + f" at batch {x.shape[0]}")
    for i, res in enumerate(results):
        res.top1_agreement = agree[i] / rows[i] if rows[i] else 0.0
        if rows[i] and res.top1_agreement < tol.min_top1:
            res.passed = False
            res.reasons.append(f"top-1 agreement {100 * res.top1_agreement:.1f} % < {100 * tol.min_top1:.1f} %")
    return ParityReport(
        reference=reference_runtime.name,
        candidates=results,
        tolerance=asdict(tol),
        input_shape=tuple(int(s) for s in input_shape),
        batches=tuple(int(b) for b in batches),
        samples=samples,
        seed=seed,
        reference_describe=_describe(reference_runtime),
    )


def _describe(runtime: Any) -> dict[str, Any]:
    fn = getattr(runtime, "describe", None)
    return fn() if callable(fn) else {"runtime": getattr(runtime, "name", type(runtime).__name__)}


def first_divergence(model: Any, onnx_model: Any, x: np.ndarray, tol: Tolerance | None = None) -> str | None:
    """Name of the first module (execution order) whose output differs between torch and ONNX.

    See ``validators.divergence.locate_divergence`` for the matching rules; returns None
    when every mapped intermediate output agrees within ``tol``.
    """
    from validators.divergence import locate_divergence

    found = locate_divergence(model, onnx_model, x, tol or Tolerance())
    return found.module if found else None
