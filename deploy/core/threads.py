"""How many threads CPU-bound work should use here: the CPUs this process may use, less those
other processes keep busy right now.

Intra-op thread pools (PyTorch's OpenMP, ONNX Runtime's) meet at a barrier after every
operator: when another process holds one of the cores, every barrier waits for the thread that
lost its core, and a forward pass on two threads beside one busy process runs several times
slower than on one. ``plan_threads`` looks before it leaps: it reads how busy the CPUs were over
a short window (``/proc/stat``, less this process's own time) and plans only the CPUs left
free. ``ThreadPlan.split`` shares them between independent streams of work (the runtimes of the
parity check), which need no barrier between them. Torch-free: the plan is numbers; the
runtimes apply it (``validators.runtimes.pytorch.torch_threads``, ONNX Runtime's session options).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: how long ``plan_threads`` watches the CPUs (USER_HZ is 100: a few ticks per CPU)
WINDOW_S = 0.1
#: a CPU busy with other work at most this much still counts as free
SLACK = 0.35


@dataclass(frozen=True)
class ThreadPlan:
    """The CPUs usable here (affinity, cgroup quota, ``OMP_NUM_THREADS``), how many of them other
    processes kept busy (None where it cannot be read) and how many are ``free`` for this run."""

    cpus: int
    busy: float | None
    free: int

    def split(self, streams: int) -> tuple[int, int]:
        """(threads per stream, streams run at once) for ``streams`` independent streams of work:
        one stream per free CPU, the free CPUs shared out between the streams that run."""
        slots = max(1, min(streams, self.free))
        return max(1, self.free // slots), slots

    def summary(self) -> str:
        """``2 CPUs, 1.0 busy with other work: 1 free``."""
        busy = "load unknown" if self.busy is None else f"{self.busy:.1f} busy with other work"
        return f"{self.cpus} CPU{'s' if self.cpus != 1 else ''}, {busy}: {self.free} free"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota and by
    ``OMP_NUM_THREADS`` when the user set it."""
    affinity = _affinity()
    cpus = len(affinity) if affinity else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    with contextlib.suppress(ValueError):
        cpus = min(cpus, max(1, int(os.environ.get("OMP_NUM_THREADS", "") or cpus)))
    return max(1, cpus)


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def _cpu_ticks(cpus: set[int] | None) -> tuple[int, int] | None:
    """(busy, all) ticks since boot of the CPUs in ``cpus`` (every CPU: None) from ``/proc/stat``;
    None off Linux."""
    busy = total = 0
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, *values = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if cpus is not None and int(name[3:]) not in cpus:
                    continue
                fields = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
                total += sum(fields)
                busy += sum(fields) - sum(fields[3:5])  # less idle and iowait
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def busy_cpus(window: float = WINDOW_S) -> float | None:
    """How many CPUs other processes kept busy over the next ``window`` seconds (this process's
    own threads left out); None where ``/proc/stat`` cannot be read."""
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    cpus = _affinity()
    before, own_before, start = _cpu_ticks(cpus), time.process_time(), time.perf_counter()
    time.sleep(window)
    after, own_after, wall = _cpu_ticks(cpus), time.process_time(), time.perf_counter() - start
    if before is None or after is None or wall <= 0:
        return None
    busy_s = (after[0] - before[0]) / ticks_per_s - (own_after - own_before)
    return max(0.0, busy_s / wall)


def plan_threads(window: float = WINDOW_S) -> ThreadPlan:
    """The plan for this run: the usable CPUs less the ones other processes keep busy (a CPU
    busy less than ``SLACK`` of the window still counts as free), at least one."""
    cpus = usable_cpus()
    busy = busy_cpus(window) if cpus > 1 else None
    free = cpus if busy is None else max(1, min(cpus, math.floor(cpus - busy + SLACK)))
    return ThreadPlan(cpus, None if busy is None else round(busy, 2), free)
