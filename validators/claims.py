"""Claims as checks with verdicts, and the claims report writers (docs/architecture.md, validators/claims.py).

Generic on purpose: nothing here knows which paper a layer came from. The caller
(deploy/claims/matrix.py) passes in the numbers a paper prints and the bands a claim
allows; this module turns measurements into *parts* (one checked statement each) and
parts into a verdict:

* ``confirmed``    every decisive part passed;
* ``refuted``      a decisive part failed (the reason names it: twin structure, parity,
                   graph check, a latency interval, a count outside its range);
* ``inconclusive`` nothing failed but a latency interval straddles its band's edge while
                   the timing noise (coefficient of variation) is above the limit or the
                   ratio itself is inside the band, or a decisive measurement could not be
                   taken (the reason says which);
* ``reported``     a claim with no verdict (numbers shown for contrast only).

Latency verdicts stand on interleaved A/B runs (validators/latency.py): the 95 % bootstrap
interval of the ratio of medians either lies inside the band (pass), lies wholly outside
it (fail), or overlaps an edge: fail when CoV <= limit and the ratio of medians itself lies
outside the band (the effect is measured and too large or too small); inconclusive when
CoV > limit (the machine was too noisy to tell) or when the ratio lies inside the band (too
few runs to tell: a wide interval around an agreeing ratio refutes nothing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

from validators.graph import compare_reports

PASS, FAIL, INCONCLUSIVE, INFO = "pass", "fail", "inconclusive", "info"
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
    """An interleaved A/B latency comparison reduced to what a verdict needs."""

    batch: int
    ratio: float
    ci_low: float
    ci_high: float
    cov_a: float
    cov_b: float
    pairs: int
    median_a_ms: float
    median_b_ms: float

    @property
    def cov(self) -> float:
        return max(self.cov_a, self.cov_b)

    @classmethod
    def from_ab(cls, ab: Any) -> "RatioMeasure":
        """From a ``validators.latency.ABResult``."""
        return cls(batch=ab.a.batch, ratio=ab.ratio, ci_low=ab.ci_low, ci_high=ab.ci_high, cov_a=ab.a.cov,
                   cov_b=ab.b.cov, pairs=ab.a.n, median_a_ms=ab.a.median_ms, median_b_ms=ab.b.median_ms)

    def text(self) -> str:
        return f"{self.ratio:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


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


def interval_status(m: RatioMeasure, band: tuple[float, float], cov_limit: float = COV_LIMIT) -> tuple[str, str]:
    """(status, why) of a ratio interval against ``band`` (see module docstring)."""
    lo, hi = band
    b, cov = _band_text(band), f"CoV {100 * m.cov:.1f} %"
    if lo <= m.ci_low and m.ci_high <= hi:
        return PASS, f"inside {b} ({cov})"
    if m.ci_high < lo or m.ci_low > hi:
        return FAIL, f"wholly outside {b} ({cov})"
    if m.cov > cov_limit:
        return INCONCLUSIVE, f"crosses an edge of {b} at {cov} > {100 * cov_limit:.0f} %: too noisy to tell"
    if lo <= m.ratio <= hi:
        return INCONCLUSIVE, (f"crosses an edge of {b} with the ratio itself inside it ({cov}, {m.pairs} pairs): "
                              "too few runs to tell; give it more time")
    return FAIL, f"not inside {b}, the ratio itself outside it, at {cov} <= {100 * cov_limit:.0f} %: the difference is real"


def latency_part(m: Optional[RatioMeasure], band: Optional[tuple[float, float]], cov_limit: float = COV_LIMIT, *,
                 missing: str = "not measured", decisive: bool = True) -> Part:
    """The A/B ratio at one batch judged against ``band`` (None or ``decisive=False``: reported only)."""
    if m is None:
        return Part("latency", INCONCLUSIVE if decisive and band else INFO, missing)
    name = f"latency batch {m.batch}"
    data = asdict(m)
    if band is None or not decisive:
        noisy = " (noisy)" if m.cov > cov_limit else ""
        return Part(name, INFO, f"ratio {m.text()}, CoV {100 * m.cov:.1f} %{noisy}, {m.pairs} pairs", data)
    status, why = interval_status(m, band, cov_limit)
    data.update(band=list(band), cov_limit=cov_limit)
    return Part(name, status, f"ratio {m.text()} {why}, {m.pairs} pairs", data)


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
    return CONFIRMED, "; ".join(f"{p.name}: {p.detail}" for p in decisive)


def make_claim(claim: str, title: str, subject: str, parts: list[Part], summary: str = "") -> ClaimResult:
    verdict, reason = verdict_from(parts)
    return ClaimResult(claim, title, subject, verdict, reason, parts, summary)


def reported_claim(claim: str, title: str, subject: str, parts: list[Part], summary: str = "") -> ClaimResult:
    """A claim shown for contrast only: its parts are all information."""
    shown = [Part(p.name, INFO, p.detail, p.data) for p in parts]
    reason = "; ".join(f"{p.name}: {p.detail}" for p in shown)
    return ClaimResult(claim, title, subject, REPORTED, reason, shown, summary)


def zero_overhead_claim(claim: str, title: str, subject: str, candidate: Any, twin: Any, *,
                        parity_passed: Optional[bool], parity_detail: str, graph_reasons: Sequence[str],
                        latencies: Sequence[Optional[RatioMeasure]], band: tuple[float, float],
                        cov_limit: float = COV_LIMIT, missing: str = "not measured",
                        twin_name: str = "plain twin") -> ClaimResult:
    """A folded model is its twin: same graph numbers, parity, latency ratio inside ``band``.

    ``candidate``/``twin`` are ``GraphReport``s (None when the export did not happen).
    """
    parts = []
    if candidate is None or twin is None:
        parts.append(Part("twin structure", INCONCLUSIVE, f"not compared: {missing}"))
    else:
        parts.append(twin_part(candidate, twin, twin_name))
        parts.append(graph_part(graph_reasons))
    parts.append(parity_part(parity_passed, parity_detail))
    parts.extend(latency_part(m, band, cov_limit, missing=missing) for m in (latencies or [None]))
    summary = ""
    if candidate is not None and twin is not None and not compare_reports(candidate, twin):
        summary = (f"graph = {twin_name} (params {candidate.params:,}, MACs {candidate.macs:,}, "
                   f"{sum(candidate.op_histogram.values())} ops); parity {'ok' if parity_passed else 'FAILED'}; "
                   f"every latency interval inside {_band_text(band)}")
    return make_claim(claim, title, subject, parts, summary)



def exit_code_for(claims: Iterable[ClaimResult]) -> int:
    """6 when any claim is refuted (docs/architecture.md exit codes), else 0."""
    return 6 if any(c.verdict == REFUTED for c in claims) else 0


def tally(claims: Iterable[ClaimResult]) -> dict[str, int]:
    out = {CONFIRMED: 0, REFUTED: 0, INCONCLUSIVE: 0, REPORTED: 0}
    for c in claims:
        out[c.verdict] = out.get(c.verdict, 0) + 1
    return out
