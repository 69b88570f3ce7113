"""Several runtimes over the same inputs side by side: the parity check's reference and candidates.

Each runtime is one stream: it runs the inputs in order, one at a time. With more than one
``slot``, every ``concurrent`` runtime (``validators.runtimes.base``) runs its stream in a thread
of its own, at most ``slots`` runs at once across the streams, while a runtime that is not
``concurrent`` runs in the caller's thread; with one slot everything runs in the caller's thread,
in turn. Streams need no barrier between them, so a busy neighbour slows each run down, never
all of them at every operator as an intra-op pool would. The caller receives every runtime's
``Outcome`` for input 0, then 1, …; the inputs may be a stream themselves (batches decoded as
they are read): the caller's thread reads them, and a stream runs at most ``lead`` inputs ahead
of the caller, so the inputs and outputs held at once stay few. A runtime that raised on an input shape is not run again
at that shape (its later outcomes there are ``skipped``). ``seconds`` adds up the time each
runtime spent in its runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Generator, Iterable, Sequence

import numpy as np

from validators.runtimes.base import Runtime

#: how many inputs a stream may run ahead of the caller
LEAD = 4


@dataclass
class Outcome:
    """One runtime on one input: its outputs by name, or the exception it raised, or skipped
    (it raised earlier at this input shape)."""

    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    skipped: bool = False


class SideBySide:
    """``for index, outcomes in SideBySide(runtimes, inputs, slots)``: ``outcomes[k]`` is runtime
    ``k`` on ``inputs[index]``. Leaving the loop early stops the streams (each finishes the run it
    is in)."""

    def __init__(self, runtimes: Sequence[Runtime], inputs: Iterable[np.ndarray], slots: int = 1,
                 lead: int = LEAD) -> None:
        self.runtimes, self._source = list(runtimes), iter(inputs)
        self.slots, self.lead = max(1, int(slots)), max(1, int(lead))
        self.seconds = [0.0] * len(self.runtimes)
        self._gate = threading.BoundedSemaphore(self.slots)
        self._crashed: list[set[tuple[int, ...]]] = [set() for _ in self.runtimes]
        self._threaded = [k for k, rt in enumerate(self.runtimes)
                          if self.slots > 1 and getattr(rt, "concurrent", False)]
        self._lead = {k: threading.Semaphore(self.lead) for k in self._threaded}
        self._inputs: dict[int, np.ndarray] = {}  # read and not yet handed back
        self._read = 0  # inputs read so far
        self._ended = False  # the inputs are all read
        self._done: dict[tuple[int, int], Outcome] = {}
        self._ready = threading.Condition()
        self._stop = False

    def _run(self, k: int, x: np.ndarray) -> Outcome:
        if tuple(x.shape) in self._crashed[k]:
            return Outcome(skipped=True)
        with self._gate:
            start = time.perf_counter()
            try:
                return Outcome(outputs=self.runtimes[k].run_all(x))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who records or re-raises it
                self._crashed[k].add(tuple(x.shape))
                return Outcome(error=exc)
            finally:
                self.seconds[k] += time.perf_counter() - start

    def _stream(self, k: int) -> None:
        i = 0
        while True:
            self._lead[k].acquire()
            x = self._input(i)
            if x is None:
                return
            try:
                outcome = self._run(k, x)
            except BaseException as exc:  # noqa: BLE001 - a stream never dies silently: the caller re-raises it
                outcome = Outcome(error=exc)
            with self._ready:
                self._done[(k, i)] = outcome
                self._ready.notify_all()
            i += 1

    def _input(self, i: int) -> np.ndarray | None:
        """Input ``i`` once the caller has read it; None when there is none (or the caller left)."""
        with self._ready:
            while i not in self._inputs and not (self._stop or (self._ended and i >= self._read)):
                self._ready.wait()
            return None if self._stop else self._inputs.get(i)

    def _read_ahead(self, upto: int) -> None:
        """Read the inputs up to index ``upto`` (the caller's thread: a stream of batches is read here)."""
        while not self._ended and self._read <= upto:
            try:
                x = next(self._source)
            except StopIteration:
                x = None
            with self._ready:
                if x is None:
                    self._ended = True
                else:
                    self._inputs[self._read] = x
                    self._read += 1
                self._ready.notify_all()

    def _take(self, k: int, i: int) -> Outcome:
        with self._ready:
            while (k, i) not in self._done:
                self._ready.wait()
            return self._done.pop((k, i))

    def __iter__(self) -> Generator[tuple[int, list[Outcome]], None, None]:
        workers = [threading.Thread(target=self._stream, args=(k,), name=f"parity-{self.runtimes[k].name}", daemon=True)
                   for k in self._threaded]
        for w in workers:
            w.start()
        try:
            i = 0
            while True:
                self._read_ahead(i + (self.lead if workers else 0))
                if i >= self._read:
                    return
                x = self._inputs[i]
                outcomes = [self._take(k, i) if k in self._lead else self._run(k, x) for k in range(len(self.runtimes))]
                yield i, outcomes
                with self._ready:
                    del self._inputs[i]
                for sem in self._lead.values():
                    sem.release()
                i += 1
        finally:
            with self._ready:
                self._stop = True
                self._ready.notify_all()
            for sem in self._lead.values():
                sem.release()
            for w in workers:
                w.join()
