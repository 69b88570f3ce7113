"""What `deploy claims` checks: the model matrix and its checks, read from the conv-kind registry.

Every registered kind whose file declares ``ClaimFacts`` gets matrix entries (one per zoo
variant, on the claims arch ResNet-50, named as the kind names its models); the check the
facts name turns measurements into a claim. The generic verdict machinery is
``validators.claims``. The checks and the ``figures`` keys they read:

1. ``ZERO_OVERHEAD`` (folded network = the baseline twin: same graph, parity, latency in
   the band); the unfolded export is timed beside it for contrast (2, no verdict).
3. ``FASTER``: params/MACs reductions against the kind's ``PaperTarget`` rows and the
   baseline's ``baseline_params``/``baseline_macs``; latency ratio below 1; ``gpu_ms``
   (per variant key and ``baseline``) and ``gpu_note`` give the paper's own ratio.
4. ``MACS_OVERHEAD``: our MACs ratio inside the one printed by the kind's target and
   ``baseline_macs``; ``overhead`` is the paper's percentage.
5. ``SAME_COST``: params equal to the baseline's within the printed digit, MACs within the
   kind's target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from deploy.core.errors import BadInputError
from deploy.layers.paper import ClaimCheck, ClaimFacts, printed_range
from deploy.layers.registry import ConvKind, baseline_kind, conv_kind, conv_kinds
from deploy.models.zoo import paper_target
from validators.claims import (
    ClaimResult,
    MachineProbes,
    Part,
    RatioMeasure,
    graph_part,
    info_part,
    latency_part,
    make_claim,
    range_part,
    reported_claim,
    twin_part,
    zero_overhead_claim,
)
from validators.graph import GraphReport

CLAIMS_ARCH = "resnet50"
ZERO_OVERHEAD_BAND = (0.97, 1.03)
FASTER_BAND = (0.0, 1.0)
_NUMBER = {check: str(i) for i, check in enumerate(ClaimCheck)}  # claim numbers follow the check order


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
    variant: str = ""  # the zoo variant's key ("1/2")
    check: ClaimCheck = ClaimCheck.BASELINE

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

    @property
    def band(self) -> tuple[float, float] | None:
        """The band its latency ratio is judged against (None: the ratio is only reported)."""
        return {ClaimCheck.ZERO_OVERHEAD: ZERO_OVERHEAD_BAND, ClaimCheck.FASTER: FASTER_BAND}.get(self.check)

    @property
    def facts(self) -> ClaimFacts:
        facts = conv_kind(self.conv).claim
        assert facts is not None
        return facts


def _kind_entries(kind: ConvKind) -> list[MatrixEntry]:
    facts = kind.claim
    assert facts is not None
    arch = kind.zoo_names.get(CLAIMS_ARCH, CLAIMS_ARCH)
    out = []
    for v in kind.variants:
        key = f"{kind.name}-{v.key}" if v.key else kind.name
        label = facts.subject + (f" {v.label}" if v.label else "")
        common = dict(arch=arch, conv=kind.name, conv_kwargs=v.options, group=kind.name, variant=v.key)
        if facts.check is ClaimCheck.ZERO_OVERHEAD:
            out.append(MatrixEntry(key, f"{label} (folded)", check=facts.check, **common))  # type: ignore[arg-type]
            out.append(MatrixEntry(f"{key}-unfolded", f"{label} (unfolded)", fold=False, simplify=False,
                                   check=ClaimCheck.UNFOLDED_CONTRAST, **common))  # type: ignore[arg-type]
        else:
            out.append(MatrixEntry(key, label, check=facts.check, **common))  # type: ignore[arg-type]
    return out


def matrix() -> tuple[MatrixEntry, ...]:
    """The baseline first, then every kind that states a cost claim, in registration order."""
    base = baseline_kind()
    assert base.claim is not None
    entries = [MatrixEntry(base.name, base.claim.subject, CLAIMS_ARCH, base.name, group=base.name)]
    for kind in conv_kinds():
        if kind.claim is not None and not kind.is_baseline:
            entries.extend(_kind_entries(kind))
    return tuple(entries)


def baseline_entry() -> MatrixEntry:
    return matrix()[0]


def _aliases() -> dict[str, str]:
    """Other names `--models` accepts: the claims arch for the baseline, kinds' aliases and model names."""
    names = {CLAIMS_ARCH: baseline_kind().name}
    for kind in conv_kinds():
        names.update({alias: kind.name for alias in kind.aliases})
        names.update({name: kind.name for name in kind.zoo_names.values()})
    return names


def model_choices() -> list[str]:
    return sorted({e.group for e in matrix()} | {e.key for e in matrix()})


def select_entries(names: list[str] | None) -> list[MatrixEntry]:
    """Entries named by ``names`` (keys or groups, comma-separated); the baseline always."""
    wanted = [n.strip().lower() for item in (names or []) for n in item.split(",") if n.strip()]
    if not wanted or "all" in wanted:
        return list(matrix())
    aliases = _aliases()
    wanted = [aliases.get(n, n) for n in wanted]
    unknown = [n for n in wanted if n not in model_choices()]
    if unknown:
        raise BadInputError(f"`models`: unknown {', '.join(unknown)}; choose from {', '.join(model_choices())}")
    base = baseline_entry()
    return [e for e in matrix() if e == base or e.key in wanted or e.group in wanted]


def paper_figures() -> dict[str, Any]:
    """Every claim's facts as data, for the claims report."""
    return {k.name: asdict(k.claim) | {"check": k.claim.check.name} for k in conv_kinds() if k.claim is not None}


# ---------------------------------------------------------------- measurements -> claims

@dataclass
class ModelRecord:
    """What the run produced for one matrix entry (the orchestrator fills it)."""

    entry: MatrixEntry
    paper_form: dict[str, Any] = field(default_factory=dict)  # zoo_row at the paper's input size
    graph: GraphReport | None = None  # of the export
    parity_passed: bool | None = None
    parity_detail: str = ""
    skipped: str | None = None  # why there is no export (input too small, parity failed)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> str:
        return self.skipped or "not exported"


Latency = dict[tuple[str, int], RatioMeasure]


@dataclass
class Context:
    """What every check reads besides its own record: the baseline, the timings, the settings."""

    base: ModelRecord
    latency: Latency
    batches: list[int]

    def measures(self, rec: ModelRecord) -> list[RatioMeasure | None]:
        return [self.latency.get((rec.entry.key, b)) for b in self.batches]

    def info_latency(self, rec: ModelRecord) -> list[Part]:
        return [latency_part(m, None, missing=rec.missing, decisive=False) for m in self.measures(rec)]


def mac_floor(rec: ModelRecord, base: ModelRecord) -> float | None:
    """MACs of the timed export over the baseline's: the ratio a perfectly MAC-bound runtime reaches."""
    if rec.graph is None or base.graph is None or not base.graph.macs or rec.graph.macs is None:
        return None
    return rec.graph.macs / base.graph.macs


def ratio_range(num: str, den: str) -> tuple[float, float]:
    """Every ratio num/den consistent with two printed figures (one unit of the last digit)."""
    (nl, nh), (dl, dh) = printed_range(num), printed_range(den)
    return nl / dh, nh / dl


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


def _red(x: float) -> str:
    return f"{-100 * x:+.1f} %"


def _printed(rec: ModelRecord) -> tuple[str, str]:
    """The (params, MACs) the paper prints for this entry's model."""
    t = paper_target(rec.entry.arch, rec.entry.conv, rec.entry.kwargs)
    if t is None:
        raise LookupError(f"{rec.entry.label}: the {rec.entry.conv} kind declares no target for it")
    return t.params, t.macs


def _zero_overhead(rec: ModelRecord, ctx: Context) -> ClaimResult:
    return zero_overhead_claim(
        _NUMBER[ClaimCheck.ZERO_OVERHEAD], ClaimCheck.ZERO_OVERHEAD.value, rec.entry.label, rec.graph, ctx.base.graph,
        parity_passed=rec.parity_passed, parity_detail=rec.parity_detail or rec.missing,
        graph_reasons=rec.graph.reasons if rec.graph else [], latencies=ctx.measures(rec), band=ZERO_OVERHEAD_BAND,
        missing=rec.missing, probes=MachineProbes(rec.extra.get("subnormal_weights"),
                                                  ctx.base.extra.get("subnormal_weights")))


def _unfolded_contrast(rec: ModelRecord, ctx: Context) -> ClaimResult:
    base = ctx.base
    parts = ctx.info_latency(rec)
    summary = []
    if rec.graph is not None and base.graph is not None:
        parts.append(twin_part(rec.graph, base.graph))
        parts.append(graph_part(rec.graph.reasons, decisive=False))
        extra = {op: n - base.graph.op_histogram.get(op, 0) for op, n in rec.graph.op_histogram.items()
                 if n > base.graph.op_histogram.get(op, 0)}
        summary.append("extra ops " + ", ".join(f"{op} +{n}" for op, n in sorted(extra.items())) if extra
                       else "same ops as plain")
        summary.append(f"graph check {'flagged: ' + rec.graph.reasons[0].split(':')[0] if rec.graph.reasons else 'ok'}")
    parts.append(Part("parity", "info", rec.parity_detail or rec.missing))
    if "session_load_s" in rec.extra:
        load = f"{rec.extra['session_load_s']:.2f} s vs plain {base.extra.get('session_load_s', float('nan')):.2f} s"
        parts.append(info_part("session load", load))
        summary.append(f"session load {load}")
    return reported_claim(_NUMBER[ClaimCheck.UNFOLDED_CONTRAST], ClaimCheck.UNFOLDED_CONTRAST.value, rec.entry.label,
                          parts, "; ".join(summary))


def paper_ratio(entry: MatrixEntry) -> float | None:
    """The latency ratio the paper prints for a FASTER entry (its ``gpu_ms`` over the baseline's)."""
    ms = entry.facts.figures.get("gpu_ms", {}) if entry.check is ClaimCheck.FASTER else {}
    return ms[entry.variant] / ms["baseline"] if entry.variant in ms and "baseline" in ms else None


def _faster(rec: ModelRecord, ctx: Context) -> ClaimResult:
    facts, base = rec.entry.facts, ctx.base
    fig = facts.figures
    parts: list[Part] = []
    summary = []
    for name, key, num, den in zip(("params reduction", "MACs reduction"), ("params", "macs"), _printed(rec),
                                   (fig["baseline_params"], fig["baseline_macs"])):
        ours = 1 - rec.paper_form[key] / base.paper_form[key]
        lo, hi = ratio_range(num, den)
        paper = 1 - float(num.split()[0]) / float(den.split()[0])
        detail = f"{_red(ours)} vs the paper's {_red(paper)} ({num} / {den}, {facts.source})"
        part = range_part(name, ours, 1 - hi, 1 - lo, detail, decisive=False, fmt=_red)
        part.data.update(ours_reduction=ours, paper_reduction=paper)
        parts.append(part)
        summary.append(f"{name.split()[0]} {_red(ours)} (paper {_red(paper)})")
    ratio, floor = paper_ratio(rec.entry), mac_floor(rec, base)
    floor_text = f"{floor:.3f}" if floor is not None else "-"
    ms = fig["gpu_ms"]
    parts.append(info_part("reference ratios", f"paper GPU ratio {ratio:.3f} ({ms[rec.entry.variant]}/{ms['baseline']} ms, "
                           f"{fig['gpu_note']}); MAC-ratio floor {floor_text}", paper_ratio=ratio, mac_floor=floor))
    parts.extend(latency_part(m, FASTER_BAND, missing=rec.missing) for m in ctx.measures(rec))
    summary.append(f"paper GPU ratio {ratio:.3f}, MAC floor {floor_text}")
    return make_claim(_NUMBER[ClaimCheck.FASTER], facts.title, rec.entry.label, parts, "; ".join(summary))


def _macs_overhead(rec: ModelRecord, ctx: Context) -> ClaimResult:
    facts, base = rec.entry.facts, ctx.base
    base_macs, macs = facts.figures["baseline_macs"], _printed(rec)[1]
    ours = rec.paper_form["macs"] / base.paper_form["macs"]
    lo, hi = ratio_range(macs, base_macs)
    detail = (f"{_pct(ours - 1)} ({rec.paper_form['macs'] / 1e9:.3f} G vs {base.paper_form['macs'] / 1e9:.3f} G) vs the "
              f"paper's {_pct(facts.figures['overhead'])} ({base_macs} -> {macs}, {facts.source})")
    parts = [range_part("MACs overhead", ours, lo, hi, detail)]
    p_ratio = rec.paper_form["params"] / base.paper_form["params"]
    parts.append(info_part("params overhead", f"{_pct(p_ratio - 1)} ({rec.paper_form['params'] / 1e6:.2f} M)"))
    parts.extend(ctx.info_latency(rec))
    return make_claim(_NUMBER[ClaimCheck.MACS_OVERHEAD], facts.title, rec.entry.label, parts)


def _same_cost(rec: ModelRecord, ctx: Context) -> ClaimResult:
    facts, base = rec.entry.facts, ctx.base
    paper_p, paper_m = _printed(rec)
    step = printed_range(paper_p)[1] - printed_range(paper_p)[0]
    diff = rec.paper_form["params"] - base.paper_form["params"]
    parts = [
        range_part(f"params equal to {base.entry.label}", diff, -step / 2, step / 2,
                   f"{rec.paper_form['params']:,} vs {base.paper_form['params']:,} ({diff:+,}; the paper prints "
                   f"{paper_p} for both, {facts.source})"),
        range_part("MACs vs the paper", rec.paper_form["macs"], *printed_range(paper_m),
                   f"{rec.paper_form['macs'] / 1e9:.3f} G vs the paper's {paper_m}"),
        info_part(f"MACs vs {base.entry.label}", f"{_pct(rec.paper_form['macs'] / base.paper_form['macs'] - 1)}"),
    ]
    parts.extend(ctx.info_latency(rec))
    return make_claim(_NUMBER[ClaimCheck.SAME_COST], facts.title, rec.entry.label, parts)


CHECKS: dict[ClaimCheck, Callable[[ModelRecord, Context], ClaimResult]] = {
    ClaimCheck.ZERO_OVERHEAD: _zero_overhead,
    ClaimCheck.UNFOLDED_CONTRAST: _unfolded_contrast,
    ClaimCheck.FASTER: _faster,
    ClaimCheck.MACS_OVERHEAD: _macs_overhead,
    ClaimCheck.SAME_COST: _same_cost,
}


def evaluate(records: dict[str, ModelRecord], latency: Latency, batches: list[int]) -> list[ClaimResult]:
    """Every claim the selected matrix entries can speak to, in claim order."""
    ctx = Context(records[baseline_entry().key], latency, batches)
    out = [CHECKS[rec.entry.check](rec, ctx) for rec in records.values() if rec.entry.check in CHECKS]
    return sorted(out, key=lambda c: int(c.claim))


def latency_rows(records: dict[str, ModelRecord], latency: Latency, batches: list[int]) -> list[dict[str, Any]]:
    """Rows for the latency table and plot: ratios per batch, MAC-ratio floor, the paper's ratio."""
    base = records[baseline_entry().key]
    rows = []
    for rec in records.values():
        if rec is base:
            continue
        marks: dict[str, float] = {}
        floor = mac_floor(rec, base)
        if floor is not None:
            marks["MAC-ratio floor"] = floor
        ratio = paper_ratio(rec.entry)
        if ratio is not None:
            marks["paper GPU ratio"] = ratio
        by_batch = {str(b): asdict(latency[(rec.entry.key, b)]) for b in batches if (rec.entry.key, b) in latency}
        rows.append({"key": rec.entry.key, "label": rec.entry.label, "by_batch": by_batch, "marks": marks})
    return rows
