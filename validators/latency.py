"""Benchmark harness: warm-up, timed runs, statistics and interleaved A/B ratios.

docs/architecture.md "Measuring speed": warm up, then N timed runs (or a time budget); report
min, median, mean, p90/p95/p99, max, throughput and the coefficient of variation
(warn above 5 %). Two artifacts are compared only by interleaving them (A B A B …)
in one process on the same input, reporting the ratio of medians A/B with a seeded
bootstrap 95 % interval.

A runtime is a ``validators.runtimes.base.Runtime``. One that keeps its own clock
(TensorRT, PyTorch on CUDA: CUDA events) also offers ``timed_run(x) -> float`` returning
the elapsed milliseconds of one run, and ``clock`` naming that clock; everything else is
timed with ``time.perf_counter_ns`` around ``run``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from deploy.core.errors import BadInputError
from deploy.core.limits import check_finite
from deploy.core.progress import SILENT, Progress
from validators.runtimes.base import Runtime

COV_WARN = 0.05
MIN_TIMED_RUNS = 3
AUTO_ITERS = 100
AUTO_DURATION_S = 30.0


def timer(runtime: Any) -> tuple[Callable[[np.ndarray], float], str]:
    """Return (one_run -> milliseconds, clock name) for ``runtime``."""
    own = getattr(runtime, "timed_run", None)
    if callable(own):
        return own, str(getattr(runtime, "clock", "runtime"))

    def wall(x: np.ndarray) -> float:
        t0 = time.perf_counter_ns()
        runtime.run(x)
        return (time.perf_counter_ns() - t0) / 1e6

    return wall, "perf_counter"


@dataclass(frozen=True)
class Warmup:
    """Warm-up by run count or by seconds (``--warmup 10`` or ``--warmup 2s``)."""

    runs: int | None = 10
    seconds: float | None = None

    @classmethod
    def parse(cls, value: "Warmup | int | float | str") -> "Warmup":
        """int -> runs, float -> seconds, str "10" -> runs, "2s"/"2.5" -> seconds."""
        if isinstance(value, Warmup):
            return value
        if isinstance(value, bool):
            raise BadInputError(f"`warmup` {value!r}: give a run count (10) or seconds (2s)")
        if isinstance(value, int):
            out = cls(runs=value, seconds=None)
        elif isinstance(value, float):
            out = cls(runs=None, seconds=value)
        else:
            text = str(value).strip().lower()
            try:
                if text.endswith("s"):
                    out = cls(runs=None, seconds=float(text[:-1]))
                elif "." in text:
                    out = cls(runs=None, seconds=float(text))
                else:
                    out = cls(runs=int(text), seconds=None)
            except ValueError:
                raise BadInputError(f"`warmup` {value!r}: give a run count (10) or seconds (2s)") from None
        if out.seconds is not None and not math.isfinite(out.seconds):
            raise BadInputError(f"`warmup` {value!r} is not a finite time: give a run count (10) or seconds (2s)")
        if (out.runs is not None and out.runs < 0) or (out.seconds is not None and out.seconds < 0):
            raise BadInputError(f"`warmup` {value!r} is negative: use 0 or more")
        return out

    def describe(self) -> str:
        return f"{self.runs} runs" if self.runs is not None else f"{self.seconds:g} s"


def _percentile(sorted_ms: np.ndarray, q: float) -> float:
    # linear interpolation (numpy's default), monotone in q, so p90 <= p95 <= p99 <= max
    return float(np.percentile(sorted_ms, q))


@dataclass
class LatencyStats:
    """Per-batch latency statistics in milliseconds, plus every raw sample."""

    batch: int
    samples_ms: list[float]
    min_ms: float
    median_ms: float
    mean_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    cov: float
    cov_warning: bool
    throughput_ips: float
    clock: str = "perf_counter"
    warmup: str = ""
    warmup_runs_done: int = 0
    total_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], batch: int, **extra: Any) -> "LatencyStats":
        """Statistics of ``samples_ms`` (one entry per timed batch)."""
        arr = np.asarray(samples_ms, dtype=np.float64)
        if arr.size == 0:
            raise BadInputError("no timed runs: give `iters` >= 1 or a longer `duration`")
        if batch < 1:
            raise BadInputError(f"batch {batch} must be >= 1")
        srt = np.sort(arr)
        median = float(np.median(srt))
        mean = float(srt.mean())
        std = float(srt.std(ddof=1)) if srt.size > 1 else 0.0
        cov = std / mean if mean > 0 else 0.0
        return cls(
            batch=int(batch),
            samples_ms=[float(v) for v in arr],
            min_ms=float(srt[0]),
            median_ms=median,
            mean_ms=mean,
            p90_ms=_percentile(srt, 90),
            p95_ms=_percentile(srt, 95),
            p99_ms=_percentile(srt, 99),
            max_ms=float(srt[-1]),
            std_ms=std,
            cov=cov,
            cov_warning=bool(cov > COV_WARN),
            throughput_ips=batch / (median / 1e3) if median > 0 else math.inf,
            **extra,
        )

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["n"] = self.n
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyStats":
        """Inverse of to_dict; the summary is recomputed from the samples and must agree."""
        missing = {"batch", "samples_ms"} - d.keys()
        if missing:
            raise BadInputError(f"latency record lacks {sorted(missing)}: not a convdeploy bench JSON")
        extra = {k: d[k] for k in ("clock", "warmup", "warmup_runs_done", "total_s", "meta") if k in d}
        fresh = cls.from_samples(d["samples_ms"], int(d["batch"]), **extra)
        if "median_ms" in d and not math.isclose(float(d["median_ms"]), fresh.median_ms, rel_tol=1e-9):
            raise BadInputError("latency record's median disagrees with its samples: the JSON was edited")
        return fresh


class Budget:
    """Stop rule: a run count, a time budget, or both (whichever comes first)."""

    def __init__(self, iters: int | None, duration: float | None, started_ns: int):
        if iters is not None and iters < 1:
            raise BadInputError(f"`iters` {iters} must be >= 1")
        check_finite("duration", duration, positive=True)
        if iters is None and duration is None:
            iters, duration = AUTO_ITERS, AUTO_DURATION_S
        self.iters, self.duration, self.started_ns = iters, duration, started_ns

    def elapsed_s(self) -> float:
        return (time.perf_counter_ns() - self.started_ns) / 1e9

    def done(self, n_done: int, last_run_s: float = 0.0) -> bool:
        """Stop at ``iters`` runs, or before a run that would end past ``duration``."""
        if self.iters is not None and n_done >= self.iters:
            return True
        if n_done < MIN_TIMED_RUNS:
            return False
        return self.duration is not None and self.elapsed_s() + last_run_s > self.duration

    def progress_total(self) -> tuple[float, str]:
        return (float(self.iters), "runs") if self.iters is not None else (float(self.duration or 0.0), "s")

    def progress_value(self, n_done: int) -> float:
        return float(n_done) if self.iters is not None else min(self.elapsed_s(), float(self.duration or 0.0))


def warm_up(steps: Sequence[Callable[[], float]], warm: Warmup, deadline_s: float | None, started_ns: int) -> int:
    """Run every step in turn during warm-up; return warm-up rounds done (at least one)."""
    done = 0
    while True:
        for step in steps:
            step()
        done += 1
        elapsed = (time.perf_counter_ns() - started_ns) / 1e9
        if warm.runs is not None and done >= warm.runs:
            break
        if warm.seconds is not None and elapsed >= warm.seconds:
            break
        # a --duration budget also bounds warm-up: at most a quarter of it
        if deadline_s is not None and elapsed >= 0.25 * deadline_s:
            break
    return done


def benchmark(runtime: Runtime, x: np.ndarray, warmup: Warmup | int | float | str = 10,
              iters: int | None = None, duration: float | None = None,
              progress: Progress = SILENT, description: str = "timing") -> LatencyStats:
    """Warm up, then time ``runtime.run(x)`` per batch.

    Stops after ``iters`` timed runs or before a run that would end past ``duration``
    seconds (warm-up included, at most a quarter of it), whichever comes first; at
    least 3 timed runs always happen. With neither, up to 100 runs or 30 s.
    """
    warm = Warmup.parse(warmup)
    one, clock = timer(runtime)
    batch = int(x.shape[0])
    t0 = time.perf_counter_ns()
    done_warm = warm_up([lambda: one(x)], warm, duration, t0) if (warm.runs or warm.seconds) else 0
    budget = Budget(iters, duration, t0)
    samples: list[float] = []
    total, unit = budget.progress_total()
    progress.task(f"{description} ({unit})", total)
    while not budget.done(len(samples), samples[-1] / 1e3 if samples else 0.0):
        samples.append(one(x))
        progress.update(completed=budget.progress_value(len(samples)))
    progress.done(budget.elapsed_s())
    return LatencyStats.from_samples(samples, batch, clock=clock, warmup=warm.describe(),
                                     warmup_runs_done=done_warm, total_s=budget.elapsed_s())


def bootstrap_ratio(a_ms: Sequence[float], b_ms: Sequence[float], n_boot: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[float, float, float]:
    """Ratio of medians A/B and its percentile-bootstrap interval (numpy only).

    Equal-length samples are taken as pairs (interleaved runs share the machine's
    drift) and resampled by pair index; otherwise A and B are resampled independently.
    """
    a = np.asarray(a_ms, dtype=np.float64)
    b = np.asarray(b_ms, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise BadInputError("bootstrap needs samples from both A and B")
    ratio = float(np.median(a) / np.median(b))
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // max(a.size, b.size)))
    for lo in range(0, n_boot, chunk):
        k = min(chunk, n_boot - lo)
        ia = rng.integers(0, a.size, size=(k, a.size))
        ib = ia if a.size == b.size else rng.integers(0, b.size, size=(k, b.size))
        ratios[lo:lo + k] = np.median(a[ia], axis=1) / np.median(b[ib], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return ratio, float(low), float(high)


@dataclass
class ABResult:
    """Interleaved A/B comparison: each side's stats and the ratio of medians A/B."""

    a: LatencyStats
    b: LatencyStats
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95
    n_boot: int = 2000
    seed: int = 0
    order: str = "AB BA"

    def contains(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "ratio": self.ratio, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "confidence": self.confidence, "n_boot": self.n_boot,
                "seed": self.seed, "order": self.order}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ABResult":
        a, b = LatencyStats.from_dict(d["a"]), LatencyStats.from_dict(d["b"])
        return cls(a=a, b=b, ratio=float(d["ratio"]), ci_low=float(d["ci_low"]), ci_high=float(d["ci_high"]),
                   confidence=float(d.get("confidence", 0.95)), n_boot=int(d.get("n_boot", 2000)),
                   seed=int(d.get("seed", 0)), order=str(d.get("order", "AB BA")))


def interleaved(a: Runtime, b: Runtime, x: np.ndarray, warmup: Warmup | int | float | str = 10,
                iters: int | None = None, duration: float | None = None, seed: int = 0,
                n_boot: int = 2000, progress: Progress = SILENT,
                x_b: np.ndarray | None = None) -> ABResult:
    """Time A and B alternately on the same input in this process.

    Pairs alternate their order (A B, B A, A B, …) so that which-runs-first effects
    and slow drift of the machine cancel. ``iters`` counts pairs. ``x_b`` gives B its own input only when the two
    artifacts need different input shapes (default: the very same array).
    """
    warm = Warmup.parse(warmup)
    one_a, clock_a = timer(a)
    one_b, clock_b = timer(b)
    xb = x if x_b is None else x_b
    t0 = time.perf_counter_ns()
    done_warm = (warm_up([lambda: one_a(x), lambda: one_b(xb)], warm, duration, t0)
                 if (warm.runs or warm.seconds) else 0)
    budget = Budget(iters, duration, t0)
    sa: list[float] = []
    sb: list[float] = []
    total, unit = budget.progress_total()
    progress.task(f"A B interleaved ({unit})", total)
    while not budget.done(len(sa), (sa[-1] + sb[-1]) / 1e3 if sa else 0.0):
        if len(sa) % 2 == 0:
            sa.append(one_a(x))
            sb.append(one_b(xb))
        else:  # B first in every other pair: position and drift effects cancel
            sb.append(one_b(xb))
            sa.append(one_a(x))
        progress.update(completed=budget.progress_value(len(sa)))
    progress.done(budget.elapsed_s())
    total_s = budget.elapsed_s()
    stats_a = LatencyStats.from_samples(sa, int(x.shape[0]), clock=clock_a, warmup=warm.describe(),
                                        warmup_runs_done=done_warm, total_s=total_s)
    stats_b = LatencyStats.from_samples(sb, int(xb.shape[0]), clock=clock_b, warmup=warm.describe(),
                                        warmup_runs_done=done_warm, total_s=total_s)
    ratio, low, high = bootstrap_ratio(sa, sb, n_boot=n_boot, seed=seed)
    return ABResult(a=stats_a, b=stats_b, ratio=ratio, ci_low=low, ci_high=high, n_boot=n_boot, seed=seed)
