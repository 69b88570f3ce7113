"""Claims as checks with verdicts, and the claims report writers (docs/architecture.md, validators/claims.py).

Generic on purpose: nothing here knows which paper a layer came from. The caller
(deploy/claims/matrix.py) passes in the numbers a paper prints and the bands a claim
allows; this module turns measurements into *parts* (one checked statement each) and
parts into a verdict:

* ``confirmed``    every decisive part passed;
* ``refuted``      a decisive part failed (the reason names it: twin structure, parity,
                   graph check, a latency interval, a count outside its range);
* ``inconclusive`` nothing failed but a decisive part could not decide: a latency
                   comparison still undecided when its budget ended, or a measurement that
                   could not be taken (the reason says which);
* ``reported``     a claim with no verdict (numbers shown for contrast only).

Latency stands on A/A-controlled, sequential comparisons (validators/sequential.py): the A/B
ratio's interval, corrected by the A/A noise band (the baseline timed against itself in the
same rounds, widened by a stated margin), lies inside the band (pass), wholly outside it (fail)
or across an edge when the budget ended (inconclusive). A ratio is never judged against a fixed
band alone: a measurement without its A/A control judges nothing.

**Structure first.** Where a claim is structural — the candidate's graph equals its twin's op for
op, params and MACs — the structure decides. Latency can then only agree (pass), be undecided
(information), or disagree beyond the A/A band, which is reported as a *machine effect* worth
investigating (with what was checked: subnormal float32 weights, drift between the first and
the second half of the rounds), never as a refutation of two identical graphs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from validators.graph import compare_reports
from validators.sequential import FAIL as SEQ_FAIL
from validators.sequential import MARGIN, NoiseBand, corrected, decide
from validators.sequential import PASS as SEQ_PASS

PASS, FAIL, INCONCLUSIVE, INFO = "pass", "fail", "inconclusive", "info"
MACHINE = "machine effect"  # identical graphs timed apart beyond the A/A band: never decides
CONFIRMED, REFUTED, REPORTED = "confirmed", "refuted", "reported"
COV_LIMIT = 0.05  # docs/architecture.md: warn above 5 %


@dataclass
class Part:
    """One checked statement of a claim; ``info`` parts never decide a verdict."""

    name: str
    status: str  # pass | fail | inconclusive | info
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClaimResult:
    """A claim about one subject (model), its parts and its verdict."""

    claim: str  # "1", "2", ...
    title: str
    subject: str
    verdict: str
    reason: str
    parts: list[Part]
    summary: str = ""  # the key numbers in one line (the caller's choice), shown for confirmed/reported

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RatioMeasure:
    """An A/A-controlled A/B latency comparison reduced to what a verdict needs."""

    batch: int
    ratio: float
    ci_low: float
    ci_high: float
    cov_a: float
    cov_b: float
    pairs: int
    median_a_ms: float
    median_b_ms: float
    aa_ratio: Optional[float] = None  # the baseline against itself (None: no control was timed)
    aa_low: Optional[float] = None
    aa_high: Optional[float] = None
    margin: float = MARGIN
    stopped: str = "budget"  # decisive | budget
    first_half: Optional[float] = None  # the A/B ratio over the first and second half of the rounds
    second_half: Optional[float] = None

    @property
    def cov(self) -> float:
        return max(self.cov_a, self.cov_b)

    @property
    def noise(self) -> Optional[NoiseBand]:
        if self.aa_ratio is None or self.aa_low is None or self.aa_high is None:
            return None
        return NoiseBand(self.aa_ratio, self.aa_low, self.aa_high, self.margin)

    @classmethod
    def from_controlled(cls, cr: Any) -> "RatioMeasure":
        """From a ``validators.sequential.ControlledResult``."""
        ab, noise = cr.ab, cr.noise
        first, second = cr.half_ratios()
        return cls(batch=ab.a.batch, ratio=ab.ratio, ci_low=ab.ci_low, ci_high=ab.ci_high, cov_a=ab.a.cov,
                   cov_b=ab.b.cov, pairs=ab.a.n, median_a_ms=ab.a.median_ms, median_b_ms=ab.b.median_ms,
                   aa_ratio=noise.ratio, aa_low=noise.ci_low, aa_high=noise.ci_high, margin=noise.margin,
                   stopped=cr.stopped, first_half=first, second_half=second)

    def text(self) -> str:
        return f"{self.ratio:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"

    def aa_text(self) -> str:
        """The A/A control and its band, or that there was none."""
        n = self.noise
        if n is None:
            return "no A/A control"
        return f"A/A {n.ratio:.3f} [{n.ci_low:.3f}, {n.ci_high:.3f}], band {n.text()} (±{100 * n.margin:g} %)"

    def pairs_text(self) -> str:
        return f"{self.pairs} pairs" + (", stopped when decisive" if self.stopped == "decisive" else "")


# ---------------------------------------------------------------- parts

def twin_part(candidate: Any, twin: Any, twin_name: str = "plain twin") -> Part:
    """Same op histogram, params and MACs as ``twin`` (two ``GraphReport``s)."""
    diffs = compare_reports(candidate, twin)
    data = {"params": candidate.params, "twin_params": twin.params, "macs": candidate.macs, "twin_macs": twin.macs,
            "op_histogram": candidate.op_histogram, "twin_op_histogram": twin.op_histogram, "differences": diffs}
    if diffs:
        return Part("twin structure", FAIL, f"differs from the {twin_name}: " + "; ".join(diffs), data)
    return Part("twin structure", PASS, f"params {candidate.params:,}, MACs {candidate.macs:,} and "
                f"{sum(candidate.op_histogram.values())} ops ({len(candidate.op_histogram)} op types) "
                f"equal the {twin_name}'s", data)


def graph_part(reasons: Sequence[str], decisive: bool = True) -> Part:
    """The export's graph check (custom-op free, TensorRT-parseable, no run-time conv weights)."""
    if not reasons:
        return Part("graph check", PASS, "custom-op free, no run-time conv weights", {"reasons": []})
    return Part("graph check", FAIL if decisive else INFO, "; ".join(reasons), {"reasons": list(reasons)})


def parity_part(passed: Optional[bool], detail: str) -> Part:
    """Numerical parity of the export against the training-form model (None: not run)."""
    if passed is None:
        return Part("parity", INCONCLUSIVE, f"not checked: {detail}")
    return Part("parity", PASS if passed else FAIL, detail, {"passed": passed})


def _band_text(band: tuple[float, float]) -> str:
    lo, hi = band
    return f"({lo:g}, {hi:g})" if lo <= 0 else f"[{lo:g}, {hi:g}]"


def interval_status(m: RatioMeasure, band: tuple[float, float]) -> tuple[str, str]:
    """(status, why) of a ratio against ``band``, corrected by its A/A control (module docstring)."""
    b, noise = _band_text(band), m.noise
    if noise is None:
        return INCONCLUSIVE, f"not judged against {b}: no A/A control was timed beside it"
    c_lo, c_hi = corrected(m.ci_low, m.ci_high, noise)
    ctext = f"corrected by the A/A band {noise.text()} to [{c_lo:.3f}, {c_hi:.3f}]"
    status = decide(m.ci_low, m.ci_high, noise, band)
    if status == SEQ_PASS:
        return PASS, f"{ctext}, inside {b}"
    if status == SEQ_FAIL:
        return FAIL, f"{ctext}, wholly outside {b}"
    return INCONCLUSIVE, f"{ctext}, across an edge of {b} when the budget ended: give it more time"


def _latency_detail(m: RatioMeasure, why: str) -> str:
    noisy = " (noisy)" if m.cov > COV_LIMIT else ""
    return f"ratio {m.text()} {why}; {m.aa_text()}; CoV {100 * m.cov:.1f} %{noisy}; {m.pairs_text()}"


def latency_part(m: Optional[RatioMeasure], band: Optional[tuple[float, float]], *, missing: str = "not measured",
                 decisive: bool = True) -> Part:
    """The A/B ratio at one batch judged against ``band`` (None or ``decisive=False``: reported only)."""
    if m is None:
        return Part("latency", INCONCLUSIVE if decisive and band else INFO, missing)
    name = f"latency batch {m.batch}"
    data = asdict(m)
    if band is None or not decisive:
        noise = m.noise
        if noise is None:
            return Part(name, INFO, _latency_detail(m, ""), data)
        differs = decide(m.ci_low, m.ci_high, noise, None) == SEQ_FAIL
        return Part(name, INFO, _latency_detail(m, "differs from 1 beyond the A/A band" if differs
                                                else "within the A/A band of 1"), data)
    status, why = interval_status(m, band)
    data.update(band=list(band))
    return Part(name, status, _latency_detail(m, why), data)


@dataclass(frozen=True)
class MachineProbes:
    """What was checked when identical graphs time apart: subnormal float32 weights of each."""

    subnormal_candidate: Optional[int] = None
    subnormal_twin: Optional[int] = None

    def text(self) -> str:
        if self.subnormal_candidate is None or self.subnormal_twin is None:
            return "subnormal weights not counted"
        cause = ("the candidate has more: denormal arithmetic is slow on many CPUs" if
                 self.subnormal_candidate > self.subnormal_twin else "not the cause")
        return f"subnormal float32 weights {self.subnormal_candidate:,} vs the twin's {self.subnormal_twin:,} ({cause})"


def count_subnormals(model: onnx.ModelProto) -> int:
    """Nonzero float32 initializer values below float32's smallest normal (denormals)."""
    tiny = np.finfo(np.float32).tiny
    count = 0
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        count += int(np.count_nonzero((arr != 0) & (np.abs(arr) < tiny)))
    return count


def structural_latency_part(m: Optional[RatioMeasure], band: tuple[float, float], probes: MachineProbes, *,
                            missing: str = "not measured") -> Part:
    """Latency beside a structure that decided: agree (pass), undecided (info), or a machine effect."""
    if m is None:
        return Part("latency", INFO, f"{missing}; the structure decides")
    part = latency_part(m, band)
    if part.status == PASS:
        return Part(part.name, PASS, "agrees: " + part.detail, part.data)
    if part.status == FAIL:
        halves = ""
        if m.first_half is not None and m.second_half is not None:
            halves = (f"; ratio {m.first_half:.3f} over the first half of the rounds, {m.second_half:.3f} over the "
                      "second (a difference means drift or caches still warming)")
        detail = (f"identical graphs timed apart: {part.detail}. A machine effect worth investigating, not a cost of "
                  f"the model: {probes.text()}{halves}")
        return Part(part.name, MACHINE, detail, {**part.data, **asdict(probes)})
    return Part(part.name, INFO, part.detail + "; the structure decides", part.data)


def range_part(name: str, value: float, lo: float, hi: float, detail: str, *, decisive: bool = True,
               fmt: Callable[[float], str] = "{:.6g}".format) -> Part:
    """``lo <= value <= hi``; ``detail`` says what the numbers are (shown either way)."""
    ok = lo <= value <= hi
    status = (PASS if ok else FAIL) if decisive else INFO
    return Part(name, status, detail + ("" if ok else f" (outside [{fmt(lo)}, {fmt(hi)}])"),
                {"value": value, "low": lo, "high": hi, "within": ok})


def info_part(name: str, detail: str, **data: Any) -> Part:
    return Part(name, INFO, detail, dict(data))


# ---------------------------------------------------------------- verdicts

def verdict_from(parts: Iterable[Part]) -> tuple[str, str]:
    """confirmed / refuted (naming every failed part) / inconclusive (naming why)."""
    parts = list(parts)
    failed = [p for p in parts if p.status == FAIL]
    if failed:
        return REFUTED, "; ".join(f"{p.name} failed: {p.detail}" for p in failed)
    unsure = [p for p in parts if p.status == INCONCLUSIVE]
    if unsure:
        return INCONCLUSIVE, "; ".join(f"{p.name}: {p.detail}" for p in unsure)
    decisive = [p for p in parts if p.status == PASS]
    if not decisive:
        return INCONCLUSIVE, "nothing decisive was measured"
    shown = decisive + [p for p in parts if p.status == MACHINE]
    return CONFIRMED, "; ".join(f"{p.name}: {p.detail}" for p in shown)


def make_claim(claim: str, title: str, subject: str, parts: list[Part], summary: str = "") -> ClaimResult:
    verdict, reason = verdict_from(parts)
    return ClaimResult(claim, title, subject, verdict, reason, parts, summary)


def reported_claim(claim: str, title: str, subject: str, parts: list[Part], summary: str = "") -> ClaimResult:
    """A claim shown for contrast only: its parts are all information."""
    shown = [Part(p.name, INFO, p.detail, p.data) for p in parts]
    reason = "; ".join(f"{p.name}: {p.detail}" for p in shown)
    return ClaimResult(claim, title, subject, REPORTED, reason, shown, summary)


_LATENCY_WORD = {PASS: "agrees", INFO: "undecided", MACHINE: "machine effect (see its part)"}


def zero_overhead_claim(claim: str, title: str, subject: str, candidate: Any, twin: Any, *,
                        parity_passed: Optional[bool], parity_detail: str, graph_reasons: Sequence[str],
                        latencies: Sequence[Optional[RatioMeasure]], band: tuple[float, float],
                        missing: str = "not measured", twin_name: str = "plain twin",
                        probes: Optional[MachineProbes] = None) -> ClaimResult:
    """A folded model is its twin: same graph numbers, graph check, parity; latency inside ``band``.

    ``candidate``/``twin`` are ``GraphReport``s (None when the export did not happen). Structure
    first: when the graphs are equal op for op, the structure decides and latency can only agree
    or be reported (``structural_latency_part``); otherwise latency is judged as any ratio.
    """
    parts = []
    if candidate is None or twin is None:
        parts.append(Part("twin structure", INCONCLUSIVE, f"not compared: {missing}"))
    else:
        parts.append(twin_part(candidate, twin, twin_name))
        parts.append(graph_part(graph_reasons))
    parts.append(parity_part(parity_passed, parity_detail))
    structural = parts[0].status == PASS
    if structural:
        lat = [structural_latency_part(m, band, probes or MachineProbes(), missing=missing)
               for m in (latencies or [None])]
    else:
        lat = [latency_part(m, band, missing=missing) for m in (latencies or [None])]
    parts.extend(lat)
    summary = ""
    if structural:
        said = "; ".join(f"{p.name} {_LATENCY_WORD.get(p.status, p.status)}" for p in lat)
        summary = (f"graph = {twin_name} (params {candidate.params:,}, MACs {candidate.macs:,}, "
                   f"{sum(candidate.op_histogram.values())} ops): the structure decides; parity "
                   f"{'ok' if parity_passed else 'FAILED'}; {said}")
    return make_claim(claim, title, subject, parts, summary)


def exit_code_for(claims: Iterable[ClaimResult]) -> int:
    """6 when any claim is refuted (docs/architecture.md exit codes), else 0."""
    return 6 if any(c.verdict == REFUTED for c in claims) else 0


def tally(claims: Iterable[ClaimResult]) -> dict[str, int]:
    out = {CONFIRMED: 0, REFUTED: 0, INCONCLUSIVE: 0, REPORTED: 0}
    for c in claims:
        out[c.verdict] = out.get(c.verdict, 0) + 1
    return out
