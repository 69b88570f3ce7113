"""Numerical parity between runtimes: the gate every export passes before it is written.

``check_parity`` runs a reference runtime and any number of candidates on K seeded random
inputs at batch 1 and at a batch > 1 (and, for a graph whose H/W are dynamic, at more
spatial sizes) and compares every output by name (``deploy.core.outputs``), each with its own
metrics and its own bound (``Tolerance`` relative to that output's max|ref|; the error
conventions are in ``deploy.core.metrics``). Top-1 agreement is judged only for outputs that
look like class scores (2-D, more than one column), and counts only the rows whose
reference top-1/top-2 margin exceeds the tolerance's error bound on that input
(``deploy.core.metrics.decisive_top1``); the near-ties left out are reported as
``top1_excluded``. On failure ``first_divergence``
(``validators.divergence``) names the first module whose intermediate output differs
between PyTorch and the ONNX graph.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from deploy.core.errors import BadInputError, ParityError, first_line
from deploy.core.metrics import Tolerance, compare, decisive_top1, looks_like_class_scores
from validators.divergence import locate_divergence
from validators.runtimes.base import Runtime
from validators.runtimes.streams import Outcome, SideBySide


@dataclass
class OutputParity:
    """Metrics of one named output of one candidate over every input."""

    name: str
    shape: tuple[int, ...]  # at the first input
    class_scores: bool  # 2-D with more than one column: top-1 agreement is judged
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    min_cosine: float = 1.0
    top1_agreement: float | None = None
    top1_rows: int = 0  # rows counted: reference margin above the error bound
    top1_excluded: int = 0  # near-ties: reference margin within the error bound
    bound: float = 0.0  # the largest allowed max abs error over the inputs
    nonfinite_mismatch: int = 0  # NaN/inf values where the reference has another value, over the inputs
    passed: bool = True
    reasons: list[str] = field(default_factory=list)


@dataclass
class CandidateParity:
    """One candidate runtime: every output's metrics, and their worst values."""

    name: str
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    min_cosine: float = 1.0
    top1_agreement: float | None = 1.0  # None when no output looks like class scores
    top1_excluded: int = 0  # near-ties over every class-score output
    runs: int = 0
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    outputs: list[OutputParity] = field(default_factory=list)
    describe: dict[str, Any] = field(default_factory=dict)

    def output(self, name: str) -> OutputParity:
        return next(o for o in self.outputs if o.name == name)


@dataclass
class ParitySeconds:
    """Where the parity check's time went: each runtime's runs (the reference's once per input),
    the comparison, and the wall time; with ``slots`` > 1 the runs overlapped."""

    reference: float
    candidates: dict[str, float]
    comparison: float
    wall: float
    slots: int

    @classmethod
    def of(cls, runs: SideBySide, comparison: float, wall: float) -> "ParitySeconds":
        candidates: dict[str, float] = {}
        for rt, seconds in zip(runs.runtimes[1:], runs.seconds[1:]):
            candidates[rt.name] = candidates.get(rt.name, 0.0) + seconds
        return cls(runs.seconds[0], candidates, comparison, wall, runs.slots)

    def summary(self) -> str:
        """``reference 2.31 s, candidates 3.02 s (folded-torch 1.80 s, onnxruntime-cpu 1.22 s), comparison 0.01 s``."""
        each = ", ".join(f"{name} {s:.2f} s" for name, s in self.candidates.items())
        side = f"; runs side by side in {self.slots} streams, {self.wall:.2f} s wall" if self.slots > 1 else ""
        return (f"reference {self.reference:.2f} s, candidates {sum(self.candidates.values()):.2f} s ({each}), "
                f"comparison {self.comparison:.2f} s{side}")


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
    extra_input_shapes: tuple[tuple[int, ...], ...] = ()  # more spatial sizes, at the first batch size
    seconds: ParitySeconds | None = None  # not in ``to_dict``: the record holds what was compared, the same every run

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("seconds")
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        """One line per candidate and output, for logs and error messages."""
        lines = []
        for c in self.candidates:
            if not c.outputs:
                lines.append(f"{self.reference} vs {c.name}: FAILED: {'; '.join(c.reasons)}")
            for o in c.outputs:
                label = f"{c.name} {o.name}" if len(c.outputs) > 1 else c.name
                top1 = f"{100 * o.top1_agreement:.1f} %" if o.top1_agreement is not None else "n/a"
                if o.top1_excluded:
                    top1 += f" ({o.top1_excluded} near-ties excluded)"
                verdict = "ok" if o.passed and c.passed else "FAILED: " + "; ".join(o.reasons or c.reasons)
                lines.append(f"{self.reference} vs {label}: max abs {o.max_abs_err:.3g}, max rel {o.max_rel_err:.3g}, "
                             f"min cos {o.min_cosine:.6f}, top-1 {top1} -> {verdict}")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise ``ParityError`` (exit 3) naming the first failing candidate, output and diverging layer."""
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


def _at(x: np.ndarray) -> str:
    return f"batch {x.shape[0]}" + (f" ({'x'.join(map(str, x.shape[1:]))})" if x.ndim == 4 else "")


class _Tally:
    """Accumulates one candidate's metrics, output by output, over the inputs."""

    def __init__(self, name: str, describe: dict[str, Any], tol: Tolerance, shape_note: bool) -> None:
        self.result = CandidateParity(name=name, describe=describe)
        self.tol, self.shape_note = tol, shape_note
        self.outputs: dict[str, OutputParity] = {}
        self.agree: dict[str, int] = {}
        self.crashed: set[tuple[int, ...]] = set()  # input shapes it raised at: not compared there again

    def fail(self, reason: str) -> None:
        self.result.passed = False
        if reason not in self.result.reasons:
            self.result.reasons.append(reason)

    def add(self, ref: dict[str, np.ndarray], out: dict[str, np.ndarray], x: np.ndarray) -> None:
        """Compare one input's outputs (both runs succeeded); raises on a shape mismatch.

        Outputs pair by name; a single output pairs with a single output whatever either is called
        (an ONNX file exported elsewhere may call it ``logits``)."""
        if len(ref) == len(out) == 1:
            out = {next(iter(ref)): next(iter(out.values()))}
        if set(out) != set(ref):
            self.fail(f"outputs differ: the reference has {', '.join(ref)}, the candidate has {', '.join(out)}")
            return
        metrics = {name: compare(ref[name], out[name]) for name in ref}
        self.result.runs += 1
        for name, m in metrics.items():
            self._add_output(name, ref[name], out[name], m, x)

    def _add_output(self, name: str, ref: np.ndarray, out: np.ndarray, m: dict[str, float], x: np.ndarray) -> None:
        o = self.outputs.get(name)
        if o is None:
            o = self.outputs[name] = OutputParity(name, tuple(int(s) for s in ref.shape), looks_like_class_scores(ref.shape))
            self.agree[name] = 0
        o.max_abs_err = max(o.max_abs_err, m["max_abs_err"])
        o.max_rel_err = max(o.max_rel_err, m["max_rel_err"])
        o.min_cosine = min(o.min_cosine, m["min_cosine"])
        o.bound = max(o.bound, self.tol.bound(m["max_ref"]))
        o.nonfinite_mismatch += int(m["nonfinite_mismatch"])
        if o.class_scores:
            agreeing, counted = decisive_top1(ref, out, self.tol.bound(m["max_ref"]))
            self.agree[name] += agreeing
            o.top1_rows += counted
            o.top1_excluded += int(m["rows"]) - counted
        bad = self.tol.violations(m, check_top1=False)
        if bad and o.passed:  # the first input it fails on says why
            o.passed = False
            o.reasons.append("; ".join(bad) + f" at {_at(x) if self.shape_note else f'batch {x.shape[0]}'}")
            self.fail(f"output '{name}': " + o.reasons[-1])

    def finish(self) -> CandidateParity:
        """The candidate's result: per-output top-1 judged, worst values over the outputs."""
        res = self.result
        res.outputs = list(self.outputs.values())
        for o in res.outputs:
            if not o.class_scores:
                continue
            if not o.top1_rows:  # every row a near-tie: nothing decisive to disagree on
                o.top1_agreement = 1.0
                continue
            o.top1_agreement = self.agree[o.name] / o.top1_rows
            if o.top1_agreement < self.tol.min_top1:
                o.passed = False
                o.reasons.append(f"top-1 agreement {100 * o.top1_agreement:.1f} % < {100 * self.tol.min_top1:.1f} %")
                self.fail(f"output '{o.name}': " + o.reasons[-1])
        if res.outputs:
            res.max_abs_err = max(o.max_abs_err for o in res.outputs)
            res.max_rel_err = max(o.max_rel_err for o in res.outputs)
            res.min_cosine = min(o.min_cosine for o in res.outputs)
        top1 = [o.top1_agreement for o in res.outputs if o.top1_agreement is not None]
        res.top1_agreement = min(top1) if top1 else (None if res.outputs else 0.0)
        res.top1_excluded = sum(o.top1_excluded for o in res.outputs)
        return res


def _check_arguments(input_shape: Sequence[int], samples: int, batches: Sequence[int],
                     extra_sizes: Sequence[Sequence[int]]) -> None:
    if samples < 1 or not batches or any(b < 1 for b in batches):
        raise BadInputError(f"need samples >= 1 and batch sizes >= 1, got samples={samples}, batches={tuple(batches)}")
    if len(input_shape) != 3:
        raise BadInputError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    if any(len(s) != 2 or min(s) < 1 for s in extra_sizes):
        raise BadInputError(f"extra spatial sizes must be (H, W) pairs of positive sizes, got {list(extra_sizes)}")


def check_parity(
    reference_runtime: Runtime,
    candidates: Sequence[Runtime],
    input_shape: Sequence[int],
    samples: int = 8,
    batches: Sequence[int] = (1, 3),
    seed: int = 0,
    tol: Tolerance | None = None,
    *,
    extra_sizes: Sequence[Sequence[int]] = (),
    slots: int = 1,
) -> ParityReport:
    """Run every candidate against the reference on seeded inputs; never raises on a mismatch.

    ``input_shape`` is (C, H, W); ``extra_sizes`` are more (H, W) sizes checked at the first
    batch size (a graph with dynamic H/W). An exception inside a candidate (e.g. a
    fixed-batch graph fed batch 3) is recorded as a failure with its first line. The reference
    runs once per input and every candidate is compared with that one output; with ``slots`` > 1
    the runtimes run side by side (``validators.runtimes.streams``), each on its own inputs in order,
    which changes when they run, never what is compared.
    """
    tol = tol or Tolerance()
    _check_arguments(input_shape, samples, batches, extra_sizes)
    channels = int(input_shape[0])
    extra = tuple((channels, int(h), int(w)) for h, w in extra_sizes)
    inputs = seeded_inputs(input_shape, batches, samples, seed)
    for i, shape in enumerate(extra, start=1):
        inputs += seeded_inputs(shape, batches[:1], samples, seed + i)
    tallies = [_Tally(c.name, _describe(c), tol, shape_note=bool(extra)) for c in candidates]
    runs = SideBySide([reference_runtime, *candidates], inputs, slots)
    start, comparing = time.perf_counter(), 0.0
    with contextlib.closing(iter(runs)) as outcomes:
        for n, (ref, *got) in outcomes:
            if ref.error is not None:
                raise ref.error
            assert ref.outputs is not None  # an outcome holds outputs or an error
            begin = time.perf_counter()
            for i, outcome in enumerate(got):
                _tally_outcome(tallies[i], ref.outputs, outcome, inputs[n], input_shape, bool(extra))
            comparing += time.perf_counter() - begin
    seconds = ParitySeconds.of(runs, comparing, time.perf_counter() - start)
    return ParityReport(
        reference=reference_runtime.name, candidates=[t.finish() for t in tallies], tolerance=asdict(tol),
        input_shape=tuple(int(s) for s in input_shape), batches=tuple(int(b) for b in batches),
        samples=samples, seed=seed, reference_describe=_describe(reference_runtime), extra_input_shapes=extra,
        seconds=seconds,
    )


def _tally_outcome(tally: _Tally, ref: dict[str, np.ndarray], outcome: Outcome, x: np.ndarray,
                   input_shape: Sequence[int], shape_note: bool) -> None:
    """One candidate's outcome on ``x`` into its tally: compared, or recorded as a failure when it raised
    (or its outputs could not be compared); nothing once it has failed at this shape."""
    if outcome.skipped or x.shape in tally.crashed:
        return
    if outcome.error is not None and not isinstance(outcome.error, Exception):
        raise outcome.error
    try:
        if outcome.error is not None:
            raise outcome.error
        assert outcome.outputs is not None  # an outcome holds outputs or an error
        tally.add(ref, outcome.outputs, x)
    except Exception as exc:  # noqa: BLE001 - recorded as this candidate's failure, reported, never silent
        msg = first_line(exc, 10_000)
        other_size = tuple(x.shape[1:]) != tuple(int(s) for s in input_shape)
        hint = " (its H/W are not really dynamic: export with fixed H/W)" if other_size else ""
        tally.fail(f"failed to run at {_at(x) if shape_note else f'batch {x.shape[0]}'}{hint}: {msg}")
        tally.crashed.add(x.shape)


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
