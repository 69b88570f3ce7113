"""What `deploy claims` checks: the model matrix and the papers' numbers (paper knowledge lives here).

The generic checks are in validators/claims.py; this module says which models are built,
which paper figure each claim is held against, and maps measurements onto those checks.

Claims (issue 5; numbers from the papers, see ``PAPER``):

1. CoC (Sec. 4.2, "definitely no extra cost") and DO-Conv (abstract, Sec. 3: "exactly
   equivalent to that of a convolutional layer") cost nothing at inference once folded.
2. The unfolded exports, timed for contrast (no verdict).
3. SPConv (Table 2) is faster than vanilla ResNet-50: 1.32 ms -> 1.23 / 1.19 / 1.17 ms per
   image at alpha = 1/2, 1/4, 1/8 (V100, batch 64).
4. IC adds +5.1 % FLOPs on ResNet-50 (Sec. 4.1; Table 1: 4.12 G -> 4.33 G).
5. SCNet-50 has ResNet-50's parameters and slightly fewer MAdds: 25.6 M, 4.0 G (Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from deploy.errors import BadInputError
from deploy.models.registry import PAPER_TARGETS, printed_range
from validators.claims import (ClaimResult, Part, RatioMeasure, graph_part, info_part, latency_part, make_claim,
                               range_part, reported_claim, twin_part, zero_overhead_claim)

ZERO_OVERHEAD_BAND = (0.97, 1.03)
FASTER_BAND = (0.0, 1.0)


@dataclass(frozen=True)
class MatrixEntry:
    """One model of the claims matrix and how it goes through the export pipeline."""

    key: str
    label: str
    arch: str
    conv: str
    conv_kwargs: tuple[tuple[str, Any], ...] = ()
    fold: bool = True
    simplify: bool = True
    group: str = ""

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.conv_kwargs)

    @property
    def stem(self) -> str:
        """File name stem in the output directory."""
        return self.key.replace("/", "-")

    @property
    def checkpoint_stem(self) -> str:
        """Folded and unfolded exports of one model share its checkpoint."""
        return self.stem.removesuffix("-unfolded")


MATRIX: tuple[MatrixEntry, ...] = (
    MatrixEntry("plain", "ResNet-50", "resnet50", "plain", group="plain"),
    MatrixEntry("coc", "CoC-ResNet50 (folded)", "resnet50", "coc", group="coc"),
    MatrixEntry("coc-unfolded", "CoC-ResNet50 (unfolded)", "resnet50", "coc", fold=False, simplify=False, group="coc"),
    MatrixEntry("doconv", "DO-Conv-ResNet50 (folded)", "resnet50", "doconv", group="doconv"),
    MatrixEntry("doconv-unfolded", "DO-Conv-ResNet50 (unfolded)", "resnet50", "doconv", fold=False, simplify=False,
                group="doconv"),
    MatrixEntry("ic", "IC-ResNet50", "resnet50", "ic", group="ic"),
    MatrixEntry("sc", "SCNet-50", "scnet50", "sc", group="sc"),
    MatrixEntry("sp-1/2", "SPConv-ResNet50 α=1/2", "resnet50", "sp", (("ratio", 0.5),), group="sp"),
    MatrixEntry("sp-1/4", "SPConv-ResNet50 α=1/4", "resnet50", "sp", (("ratio", 0.25),), group="sp"),
    MatrixEntry("sp-1/8", "SPConv-ResNet50 α=1/8", "resnet50", "sp", (("ratio", 0.125),), group="sp"),
)
BASELINE = MATRIX[0]
_ALIASES = {"scnet": "sc", "scnet50": "sc", "resnet50": "plain", "all": "*"}


def model_choices() -> list[str]:
    return sorted({e.group for e in MATRIX} | {e.key for e in MATRIX})


def select_entries(names: Optional[list[str]]) -> list[MatrixEntry]:
    """Entries named by ``--models`` (keys or groups, comma-separated); the baseline always."""
    wanted = [n.strip().lower() for item in (names or []) for n in item.split(",") if n.strip()]
    if not wanted or "all" in wanted:
        return list(MATRIX)
    wanted = [_ALIASES.get(n, n) for n in wanted]
    unknown = [n for n in wanted if n not in model_choices()]
    if unknown:
        raise BadInputError(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(model_choices())}")
    return [e for e in MATRIX if e is BASELINE or e.key in wanted or e.group in wanted]


# ---------------------------------------------------------------- the papers' numbers

def _target(arch: str, conv: str, **kw: Any):
    return next(t for t in PAPER_TARGETS if (t.arch, t.conv, t.conv_kwargs) == (arch, conv, kw))


PAPER: dict[str, Any] = {
    # SPConv Table 2 (ResNet-50 row: 25.56 M, 4.14 G; latency per image on a V100, batch 64, DALI)
    "sp_baseline": ("25.56 M", "4.14 G"),
    "sp_rows": {r: (_target("resnet50", "sp", ratio=r).params, _target("resnet50", "sp", ratio=r).macs)
                for r in (0.5, 0.25, 0.125)},
    "sp_gpu_ms": {"plain": 1.32, 0.5: 1.23, 0.25: 1.19, 0.125: 1.17},
    "sp_source": "SPConv Table 2",
    "sp_gpu_note": "V100, batch 64",
    # IC Table 1 / Sec. 4.1: ResNet-50 4.12 G -> IC-ResNet50 4.33 G, "+5.1 % FLOPs"
    "ic_macs": ("4.12 G", _target("resnet50", "ic").macs),
    "ic_overhead": 0.051,
    "ic_source": "IC Sec. 4.1 / Table 1",
    # SCNet Table 1: SCNet-50 25.6 M params, 4.0 G MAdds (ResNet-50: 25.6 M, 4.1 G)
    "sc": (_target("scnet50", "sc").params, _target("scnet50", "sc").macs),
    "sc_source": "SCNet Table 1",
    "zero_overhead_source": "CoC Sec. 4.2; DO-Conv abstract and Sec. 3",
}


def ratio_range(num: str, den: str) -> tuple[float, float]:
    """Every ratio num/den consistent with two printed figures (one unit of the last digit)."""
    (nl, nh), (dl, dh) = printed_range(num), printed_range(den)
    return nl / dh, nh / dl


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


# ---------------------------------------------------------------- measurements -> claims

@dataclass
class ModelRecord:
    """What the run produced for one matrix entry (the orchestrator fills it)."""

    entry: MatrixEntry
    paper_form: dict[str, Any] = field(default_factory=dict)  # zoo_row at the paper's input size
    graph: Any = None  # validators.graph.GraphReport of the export
    parity_passed: Optional[bool] = None
    parity_detail: str = ""
    skipped: Optional[str] = None  # why there is no export (input too small, parity failed)
    extra: dict[str, Any] = field(default_factory=dict)


def _missing(rec: ModelRecord) -> str:
    return rec.skipped or "not exported"


def _latencies(rec: ModelRecord, latency: dict, batches: list[int]) -> list[Optional[RatioMeasure]]:
    return [latency.get((rec.entry.key, b)) for b in batches]


def _info_latency(rec: ModelRecord, latency: dict, batches: list[int]) -> list[Part]:
    return [latency_part(m, None, missing=_missing(rec), decisive=False) for m in _latencies(rec, latency, batches)]


def mac_floor(rec: ModelRecord, base: ModelRecord) -> Optional[float]:
    """MACs of the timed export over the baseline's: the ratio a perfectly MAC-bound runtime reaches."""
    if rec.graph is None or base.graph is None or not base.graph.macs or rec.graph.macs is None:
        return None
    return rec.graph.macs / base.graph.macs


def _claim1(rec: ModelRecord, base: ModelRecord, latency: dict, batches: list[int], cov_limit: float) -> ClaimResult:
    title = "zero inference overhead once folded"
    return zero_overhead_claim(
        "1", title, rec.entry.label, rec.graph, base.graph, parity_passed=rec.parity_passed,
        parity_detail=rec.parity_detail or _missing(rec), graph_reasons=rec.graph.reasons if rec.graph else [],
        latencies=_latencies(rec, latency, batches), band=ZERO_OVERHEAD_BAND, cov_limit=cov_limit,
        missing=_missing(rec))


def _claim2(rec: ModelRecord, base: ModelRecord, latency: dict, batches: list[int]) -> ClaimResult:
    parts = _info_latency(rec, latency, batches)
    summary = []
    if rec.graph is not None and base.graph is not None:
        parts.append(twin_part(rec.graph, base.graph))
        parts.append(graph_part(rec.graph.reasons, decisive=False))
        extra = {op: n - base.graph.op_histogram.get(op, 0) for op, n in rec.graph.op_histogram.items()
                 if n > base.graph.op_histogram.get(op, 0)}
        summary.append("extra ops " + ", ".join(f"{op} +{n}" for op, n in sorted(extra.items())) if extra
                       else "same ops as plain")
        summary.append(f"graph check {'flagged: ' + rec.graph.reasons[0].split(':')[0] if rec.graph.reasons else 'ok'}")
    parts.append(Part("parity", "info", rec.parity_detail or _missing(rec)))
    if "session_load_s" in rec.extra:
        load = f"{rec.extra['session_load_s']:.2f} s vs plain {base.extra.get('session_load_s', float('nan')):.2f} s"
        parts.append(info_part("session load", load))
        summary.append(f"session load {load}")
    return reported_claim("2", "the price of not folding (contrast)", rec.entry.label, parts, "; ".join(summary))


def _red(x: float) -> str:
    return f"{-100 * x:+.1f} %"


def _claim3(rec: ModelRecord, base: ModelRecord, latency: dict, batches: list[int], cov_limit: float) -> ClaimResult:
    alpha = rec.entry.kwargs["ratio"]
    paper_p, paper_m = PAPER["sp_rows"][alpha]
    base_p, base_m = PAPER["sp_baseline"]
    parts: list[Part] = []
    summary = []
    for name, key, num, den in (("params reduction", "params", paper_p, base_p), ("MACs reduction", "macs", paper_m, base_m)):
        ours = 1 - rec.paper_form[key] / base.paper_form[key]
        lo, hi = ratio_range(num, den)
        paper = 1 - float(num.split()[0]) / float(den.split()[0])
        detail = f"{_red(ours)} vs the paper's {_red(paper)} ({num} / {den}, {PAPER['sp_source']})"
        part = range_part(name, ours, 1 - hi, 1 - lo, detail, decisive=False, fmt=_red)
        part.data.update(ours_reduction=ours, paper_reduction=paper)
        parts.append(part)
        summary.append(f"{name.split()[0]} {_red(ours)} (paper {_red(paper)})")
    paper_ratio = PAPER["sp_gpu_ms"][alpha] / PAPER["sp_gpu_ms"]["plain"]
    floor = mac_floor(rec, base)
    floor_text = f"{floor:.3f}" if floor is not None else "-"
    parts.append(info_part("reference ratios", f"paper GPU ratio {paper_ratio:.3f} ({PAPER['sp_gpu_ms'][alpha]}/"
                           f"{PAPER['sp_gpu_ms']['plain']} ms, {PAPER['sp_gpu_note']}); MAC-ratio floor {floor_text}",
                           paper_ratio=paper_ratio, mac_floor=floor))
    parts.extend(latency_part(m, FASTER_BAND, cov_limit, missing=_missing(rec))
                 for m in _latencies(rec, latency, batches))
    summary.append(f"paper GPU ratio {paper_ratio:.3f}, MAC floor {floor_text}")
    return make_claim("3", "SPConv is faster than ResNet-50", rec.entry.label, parts, "; ".join(summary))


def _claim4(rec: ModelRecord, base: ModelRecord, latency: dict, batches: list[int]) -> ClaimResult:
    ours = rec.paper_form["macs"] / base.paper_form["macs"]
    lo, hi = ratio_range(PAPER["ic_macs"][1], PAPER["ic_macs"][0])
    detail = (f"{_pct(ours - 1)} ({rec.paper_form['macs'] / 1e9:.3f} G vs {base.paper_form['macs'] / 1e9:.3f} G) vs the "
              f"paper's {_pct(PAPER['ic_overhead'])} ({PAPER['ic_macs'][0]} -> {PAPER['ic_macs'][1]}, {PAPER['ic_source']})")
    parts = [range_part("MACs overhead", ours, lo, hi, detail)]
    p_ratio = rec.paper_form["params"] / base.paper_form["params"]
    parts.append(info_part("params overhead", f"{_pct(p_ratio - 1)} ({rec.paper_form['params'] / 1e6:.2f} M)"))
    parts.extend(_info_latency(rec, latency, batches))
    return make_claim("4", "IC adds about +5.1 % MACs", rec.entry.label, parts)


def _claim5(rec: ModelRecord, base: ModelRecord, latency: dict, batches: list[int]) -> ClaimResult:
    paper_p, paper_m = PAPER["sc"]
    step = printed_range(paper_p)[1] - printed_range(paper_p)[0]
    diff = rec.paper_form["params"] - base.paper_form["params"]
    parts = [
        range_part("params equal to ResNet-50", diff, -step / 2, step / 2,
                   f"{rec.paper_form['params']:,} vs {base.paper_form['params']:,} ({diff:+,}; the paper prints "
                   f"{paper_p} for both, {PAPER['sc_source']})"),
        range_part("MACs vs the paper", rec.paper_form["macs"], *printed_range(paper_m),
                   f"{rec.paper_form['macs'] / 1e9:.3f} G vs the paper's {paper_m}"),
        info_part("MACs vs ResNet-50", f"{_pct(rec.paper_form['macs'] / base.paper_form['macs'] - 1)}"),
    ]
    parts.extend(_info_latency(rec, latency, batches))
    return make_claim("5", "SCNet-50 costs what ResNet-50 costs", rec.entry.label, parts)


def evaluate(records: dict[str, ModelRecord], latency: dict[tuple[str, int], RatioMeasure], batches: list[int],
             cov_limit: float) -> list[ClaimResult]:
    """Every claim the selected matrix entries can speak to, in claim order."""
    base = records[BASELINE.key]
    out: list[ClaimResult] = []
    for rec in records.values():
        e = rec.entry
        if e.group in ("coc", "doconv"):
            out.append(_claim1(rec, base, latency, batches, cov_limit) if e.fold else _claim2(rec, base, latency, batches))
        elif e.group == "sp":
            out.append(_claim3(rec, base, latency, batches, cov_limit))
        elif e.group == "ic":
            out.append(_claim4(rec, base, latency, batches))
        elif e.group == "sc":
            out.append(_claim5(rec, base, latency, batches))
    return sorted(out, key=lambda c: c.claim)


def latency_rows(records: dict[str, ModelRecord], latency: dict[tuple[str, int], RatioMeasure],
                 batches: list[int]) -> list[dict[str, Any]]:
    """Rows for the latency table and plot: ratios per batch, MAC-ratio floor, the paper's ratio."""
    from dataclasses import asdict

    base = records[BASELINE.key]
    rows = []
    for rec in records.values():
        if rec.entry is BASELINE:
            continue
        marks: dict[str, float] = {}
        floor = mac_floor(rec, base)
        if floor is not None:
            marks["MAC-ratio floor"] = floor
        if rec.entry.group == "sp":
            marks["paper GPU ratio"] = PAPER["sp_gpu_ms"][rec.entry.kwargs["ratio"]] / PAPER["sp_gpu_ms"]["plain"]
        by_batch = {str(b): asdict(latency[(rec.entry.key, b)]) for b in batches if (rec.entry.key, b) in latency}
        rows.append({"key": rec.entry.key, "label": rec.entry.label, "by_batch": by_batch, "marks": marks})
    return rows
