"""What the papers print about their layers' cost, kept as printed, beside each layer.

A layer file declares its paper's figures (``PaperTarget``: params and MACs of one model)
and what the paper claims about inference cost (``ClaimFacts``); the conv-kind registry
carries both, the zoo table compares against the targets and ``deploy claims`` turns the
claim facts into checks. Numbers stay strings such as ``"18.34 M"`` so the precision the
paper printed is kept: ``printed_range`` turns one into value ± one unit of its last
printed digit, the tolerance every comparison uses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9}


def parse_count(text: str) -> tuple[float, float]:
    """``"18.34 M" -> (18.34e6, 0.01e6)``: the value and one unit of its last printed digit."""
    number, unit = text.split()
    scale = _UNITS[unit]
    decimals = len(number.split(".")[1]) if "." in number else 0
    return float(number) * scale, 10.0 ** (-decimals) * scale


def printed_range(text: str) -> tuple[float, float]:
    """Closed interval of counts within one unit of the last printed digit of ``text``."""
    value, step = parse_count(text)
    return value - step, value + step


@dataclass(frozen=True)
class PaperTarget:
    """One (model, params, MACs) row a paper prints, numbers kept as printed.

    ``conv`` is filled in by the registry (the kind that declares the target).
    ``convention`` names the MAC counter whose convention the paper's figure follows:
    ``conv`` (convolutions and matrix products only, ``count_macs``) or ``thop``
    (BatchNorm and pooling included, ``count_macs_thop``); ``note`` says why.
    """

    arch: str
    params: str
    macs: str
    source: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    convention: str = "conv"
    note: str = ""
    conv: str = ""

    @property
    def conv_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.kwargs)
        return f"{self.arch}/{self.conv}" + (f"({opts})" if opts else "")


def target(arch: str, params: str, macs: str, source: str, *, convention: str = "conv", note: str = "",
           **conv_kwargs: Any) -> PaperTarget:
    """A ``PaperTarget`` with its layer options given as keywords (``ratio=0.5``)."""
    return PaperTarget(arch, params, macs, source, tuple(sorted(conv_kwargs.items())), convention, note)


THOP_NOTE = (
    "SPConv's tables count MACs as thop does (BatchNorm and pooling included): in thop's convention "
    "(the zoo table's thop view) plain ResNet-20 is 41.62 M, the printed figure, and every SPConv row is within 1.5 %"
)


class ClaimCheck(enum.Enum):
    """The kinds of cost claim ``deploy claims`` knows how to check (its claim numbers follow this order)."""

    BASELINE = "the network every latency ratio is measured against"
    ZERO_OVERHEAD = "zero inference overhead once folded"
    UNFOLDED_CONTRAST = "the price of not folding (contrast)"
    FASTER = "faster than the baseline"
    MACS_OVERHEAD = "MACs overhead as printed"
    SAME_COST = "costs what the baseline costs"


@dataclass(frozen=True)
class ClaimFacts:
    """What a paper claims about its layer's inference cost, with the figures it prints.

    ``subject`` names the claims model ("SPConv-ResNet50"); ``figures`` holds the numbers
    the check needs beyond the kind's ``PaperTarget`` rows, keyed as that check documents
    (``deploy.claims.matrix``): e.g. the baseline's printed counts, per-variant latencies.
    """

    check: ClaimCheck
    subject: str
    source: str = ""
    title: str = ""
    figures: Mapping[str, Any] = field(default_factory=dict)
