"""A/A-controlled, sequential A/B comparisons: a ratio judged beside the machine's own noise.

docs/architecture.md "Measuring speed". A comparison that judges times three runtimes in the
same rounds: the candidate A, the baseline B and a second instance of the baseline B' (the same
file opened again, or the very same runtime). Each round runs the three in one of the six
orders in turn, so that every position and every drift of the machine is shared. Two ratios of
medians come out, each with its paired bootstrap 95 % interval (``validators.latency``):

* A/B, the comparison asked for;
* B'/B, the **A/A control**: what two identical artifacts look like on this machine, right now.

The A/A interval widened by ``margin`` on each side is the **noise band** [n_lo, n_hi]: the
bias the harness and the machine may put on any ratio. The true A/B ratio then lies in the
**corrected interval** [ci_low / n_hi, ci_high / n_lo], and a band claimed for the ratio is
judged on that interval, never on the raw one alone: wholly inside the band ``pass``, wholly
outside ``fail``, across an edge ``undecided``.

**Sequential sampling**: rounds are added until the corrected interval is decisive against the
band or the budget (seconds, or pairs) ends, in which case the comparison is ``undecided`` with
the pairs it took. The interval is looked at after 8 pairs and then each time the pairs grew by
half (8, 12, 18, 27, …): a budget holds few looks, and the A/A margin absorbs what repeated
looks add to the error rate. Without a band (a ratio only reported) it stops once the corrected
interval excludes 1 (a difference is established) or at the budget's end.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from deploy.core.errors import BadInputError
from deploy.core.limits import check_finite
from deploy.core.progress import SILENT, Progress
from validators.latency import ABResult, Budget, LatencyStats, Warmup, bootstrap_ratio, timer, warm_up
from validators.runtimes.base import Runtime

PASS, FAIL, UNDECIDED = "pass", "fail", "undecided"
#: the A/A interval is widened by this much on each side (a ratio of 0.01 = 1 %)
MARGIN = 0.01
FIRST_LOOK = 8
LOOK_GROWTH = 1.5
LOOK_BOOT = 1000  # bootstrap resamples at an interim look (the final interval uses n_boot)
_ORDERS = tuple(itertools.permutations(range(3)))  # A, B, B' in all six orders, in turn


@dataclass(frozen=True)
class NoiseBand:
    """The A/A control: B'/B with its interval, widened by ``margin`` on each side."""

    ratio: float
    ci_low: float
    ci_high: float
    margin: float = MARGIN

    @property
    def low(self) -> float:
        return max(self.ci_low - self.margin, 1e-9)

    @property
    def high(self) -> float:
        return self.ci_high + self.margin

    def text(self) -> str:
        return f"[{self.low:.3f}, {self.high:.3f}]"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "low": self.low, "high": self.high}


def corrected(ci_low: float, ci_high: float, noise: NoiseBand) -> tuple[float, float]:
    """Every true ratio the A/B interval allows once the machine may bias it by the noise band."""
    return ci_low / noise.high, ci_high / noise.low


def decide(ci_low: float, ci_high: float, noise: NoiseBand, band: Optional[tuple[float, float]]) -> str:
    """pass (corrected interval inside ``band``), fail (wholly outside) or undecided.

    ``band`` None: fail means the ratio differs from 1 beyond the noise, pass never happens.
    """
    lo, hi = band if band is not None else (1.0, 1.0)
    c_lo, c_hi = corrected(ci_low, ci_high, noise)
    if band is not None and lo <= c_lo and c_hi <= hi:
        return PASS
    if c_hi < lo or c_lo > hi:
        return FAIL
    return UNDECIDED


@dataclass(frozen=True)
class Look:
    """One look at the interval during sequential sampling."""

    pairs: int
    ratio: float
    ci_low: float
    ci_high: float
    aa_low: float
    aa_high: float
    status: str


@dataclass
class ControlledResult:
    """An A/B comparison with its A/A control, the band it was judged against and how it stopped."""

    ab: ABResult  # A against B
    aa: ABResult  # B' against B: the control
    noise: NoiseBand
    band: Optional[tuple[float, float]]
    status: str  # pass | fail | undecided
    stopped: str  # decisive | budget
    looks: list[Look] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return self.ab.a.n

    @property
    def corrected(self) -> tuple[float, float]:
        return corrected(self.ab.ci_low, self.ab.ci_high, self.noise)

    def half_ratios(self) -> tuple[float, float]:
        """A/B ratio of medians over the first and the second half of the rounds (drift, warming caches)."""
        a, b = np.asarray(self.ab.a.samples_ms), np.asarray(self.ab.b.samples_ms)
        h = max(1, a.size // 2)
        return float(np.median(a[:h]) / np.median(b[:h])), float(np.median(a[h:] if a.size > 1 else a)
                                                                 / np.median(b[h:] if b.size > 1 else b))

    def to_dict(self) -> dict[str, Any]:
        return {**self.ab.to_dict(), "aa": self.aa.to_dict(), "noise": self.noise.to_dict(),
                "band": list(self.band) if self.band is not None else None, "status": self.status,
                "stopped": self.stopped, "pairs": self.pairs, "corrected": list(self.corrected),
                "looks": [asdict(k) for k in self.looks]}


def _next_look(pairs: int) -> int:
    return max(pairs + 1, math.ceil(pairs * LOOK_GROWTH))


def _look(samples: list[list[float]], band: Optional[tuple[float, float]], margin: float, n_boot: int,
          seed: int) -> tuple[Look, NoiseBand]:
    a, b, b2 = samples
    ratio, low, high = bootstrap_ratio(a, b, n_boot=n_boot, seed=seed)
    aa = bootstrap_ratio(b2, b, n_boot=n_boot, seed=seed + 1)
    noise = NoiseBand(*aa, margin=margin)
    return Look(len(a), ratio, low, high, aa[1], aa[2], decide(low, high, noise, band)), noise


def controlled(a: Runtime, b: Runtime, x: np.ndarray, *, twin: Optional[Runtime] = None,
               band: Optional[tuple[float, float]] = None, warmup: Warmup | int | float | str = 10,
               iters: Optional[int] = None, duration: Optional[float] = None, margin: float = MARGIN,
               seed: int = 0, n_boot: int = 2000, progress: Progress = SILENT) -> ControlledResult:
    """Time A, B and B' (``twin``, default B itself) in rotating rounds until decisive (module docstring).

    ``iters`` caps the pairs and ``duration`` the seconds (warm-up included, at most a quarter of
    it); with neither, up to 100 pairs or 30 s. At least 3 rounds always run.
    """
    check_finite("margin", margin)
    if not 0 <= margin < 1:
        raise BadInputError(f"`margin` {margin} must be in [0, 1): it widens the A/A interval by that ratio")
    warm = Warmup.parse(warmup)
    runs = [timer(rt)[0] for rt in (a, b, twin if twin is not None else b)]
    clocks = [timer(rt)[1] for rt in (a, b)]
    t0 = time.perf_counter_ns()
    steps = [functools.partial(one, x) for one in runs]
    done_warm = warm_up(steps, warm, duration, t0) if (warm.runs or warm.seconds) else 0
    budget = Budget(iters, duration, t0)
    samples: list[list[float]] = [[], [], []]
    looks: list[Look] = []
    next_look, stopped = FIRST_LOOK, "budget"
    total, unit = budget.progress_total()
    progress.task(f"A B B' rounds ({unit})", total)
    while not budget.done(len(samples[0]), sum(s[-1] for s in samples) / 1e3 if samples[0] else 0.0):
        for k in _ORDERS[len(samples[0]) % len(_ORDERS)]:
            samples[k].append(runs[k](x))
        progress.update(completed=budget.progress_value(len(samples[0])))
        if len(samples[0]) >= next_look:
            look, _ = _look(samples, band, margin, LOOK_BOOT, seed)
            looks.append(look)
            next_look = _next_look(next_look)
            if look.status != UNDECIDED:
                stopped = "decisive"
                break
    progress.done(budget.elapsed_s())
    final, noise = _look(samples, band, margin, n_boot, seed)
    status = final.status
    if stopped == "decisive" and status == UNDECIDED:  # the full bootstrap disagreed with the interim one
        stopped = "budget"
    if looks and looks[-1].pairs == final.pairs:
        looks[-1] = final  # the last look, with the full bootstrap
    else:
        looks.append(final)
    total_s = budget.elapsed_s()
    stats = [LatencyStats.from_samples(s, int(x.shape[0]), clock=clocks[min(i, 1)], warmup=warm.describe(),
                                       warmup_runs_done=done_warm, total_s=total_s) for i, s in enumerate(samples)]
    ab = ABResult(a=stats[0], b=stats[1], ratio=final.ratio, ci_low=final.ci_low, ci_high=final.ci_high,
                  n_boot=n_boot, seed=seed, order="A B B' rotated")
    aa = ABResult(a=stats[2], b=stats[1], ratio=noise.ratio, ci_low=noise.ci_low, ci_high=noise.ci_high,
                  n_boot=n_boot, seed=seed + 1, order="A B B' rotated")
    return ControlledResult(ab, aa, noise, band, status, stopped, looks)
