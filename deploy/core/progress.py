"""How work that takes seconds reports itself: one protocol the library calls and the front ends draw.

The library (export steps, timing loops, training, the claims phases) reports tasks through a
``Progress``; the CLI passes a rich one (``deploy.commands.printing.RichProgress``), the Python
API one that forwards each step's time to the caller's function, and by default nothing is shown
(``SILENT``). ``StepLog`` runs the named steps of a pipeline: it times each, reports it, and runs
the test hook at each step's start (``deploy.core.atomic.run_hook``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Protocol

from deploy.core.atomic import run_hook


class Progress(Protocol):
    """A task at a time: its name and size (None: unknown), how far it is, when it is done."""

    def task(self, name: str, total: float | None = None) -> None: ...

    def update(self, *, completed: float | None = None, advance: float = 0.0, text: str | None = None) -> None: ...

    def done(self, seconds: float) -> None: ...

    def log(self, text: str) -> None: ...


class Silent:
    """Shows nothing."""

    def task(self, name: str, total: float | None = None) -> None:
        pass

    def update(self, *, completed: float | None = None, advance: float = 0.0, text: str | None = None) -> None:
        pass

    def done(self, seconds: float) -> None:
        pass

    def log(self, text: str) -> None:
        pass


SILENT = Silent()


class StepTimes(Silent):
    """Calls ``on_done(step, seconds)`` as each task finishes (the Python API's ``progress=``)."""

    def __init__(self, on_done: Callable[[str, float], None]) -> None:
        self.on_done, self.current = on_done, ""

    def task(self, name: str, total: float | None = None) -> None:
        self.current = name

    def done(self, seconds: float) -> None:
        self.on_done(self.current, seconds)


class StepLog:
    """The named steps of a run: each timed (``seconds``), reported to ``progress``, and preceded by the
    test hook of its name."""

    def __init__(self, progress: Progress = SILENT) -> None:
        self.seconds: dict[str, float] = {}
        self.progress = progress

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.progress.task(name)
        run_hook(name)
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self.progress.done(self.seconds[name])
