"""Numerical parity between runtimes: the gate every export passes before it is written.

``check_parity`` runs a reference runtime and any number of candidates on K seeded random
inputs at batch 1 and at a batch > 1 and judges each with a ``Tolerance``
(``deploy.metrics``: the error conventions are there). Top-1 agreement counts only the rows
whose reference top-1/top-2 margin exceeds the tolerance's error bound on that input
(``deploy.metrics.decisive_top1``); the near-ties left out are reported as
``top1_excluded``. On failure ``first_divergence``
(``validators.divergence``) names the first module whose intermediate output differs
between PyTorch and the ONNX graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from deploy.errors import BadInputError, ParityError
from deploy.metrics import Tolerance, compare, decisive_top1
from validators.divergence import locate_divergence


class Runtime(Protocol):
    """Anything with a name and ``run(x) -> y`` (validators/runtimes.py)."""

    name: str

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class CandidateParity:
    """Aggregated metrics of one candidate runtime over every input."""

    name: str
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    min_cosine: float = 1.0
    top1_agreement: float = 1.0
    top1_rows: int = 0  # rows counted: reference margin above the error bound
    top1_excluded: int = 0  # near-ties: reference margin within the error bound
    runs: int = 0
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    describe: dict[str, Any] = field(default_factory=dict)

    def add(self, metrics: dict[str, float], agreeing: int, counted: int) -> int:
        """Fold one run's metrics in (``decisive_top1``'s counts); return its agreeing rows."""
        self.runs += 1
        self.max_abs_err = max(self.max_abs_err, metrics["max_abs_err"])
        self.max_rel_err = max(self.max_rel_err, metrics["max_rel_err"])
        self.min_cosine = min(self.min_cosine, metrics["min_cosine"])
        self.top1_rows += counted
        self.top1_excluded += int(metrics["rows"]) - counted
        return agreeing


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
                f"min cos {c.min_cosine:.6f}, top-1 {100 * c.top1_agreement:.1f} %"
                f"{f' ({c.top1_excluded} near-ties excluded)' if c.top1_excluded else ''} -> {verdict}"
            )
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise ``ParityError`` (exit 3) naming the first failing candidate and the diverging layer."""
        for c in self.candidates:
            if not c.passed:
                where = f"; first diverging layer: {self.first_divergence}" if self.first_divergence else ""
                raise ParityError(
                    f"parity failed for {c.name} vs {self.reference}: {'; '.join(c.reasons)}{where}: "
                    "do not ship this export (re-export, or loosen `atol`/`rtol` only if the error is expected)"
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
            except Exception as exc:  # noqa: BLE001 - recorded as this candidate's failure, reported, never silent
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                res.passed = False
                res.reasons.append(f"failed to run at batch {x.shape[0]}: {msg}")
                crashed.add((i, x.shape[0]))
                continue
            agree[i] += res.add(m, *decisive_top1(ref, out, tol.bound(m["max_ref"])))
            bad = tol.violations(m, check_top1=False)
            if bad:
                res.passed = False
                if not any(r.startswith("max abs") for r in res.reasons):
                    res.reasons.append(bad[0] + f" at batch {x.shape[0]}")
    for i, res in enumerate(results):
        res.top1_agreement = agree[i] / res.top1_rows if res.top1_rows else (1.0 if res.runs else 0.0)
        if res.top1_rows and res.top1_agreement < tol.min_top1:
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
    found = locate_divergence(model, onnx_model, x, tol or Tolerance())
    return found.module if found else None
