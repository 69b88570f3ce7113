"""`deploy claims`: check the papers' efficiency claims on this machine, with verdicts.

The work is deploy/claims_run.run_claims (a plain function); this module parses options,
shows progress (what is running, and the ETA) and prints the verdict table. Exit code 6
when any claim is refuted (after every report file is written), 0 otherwise.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from deploy.claims.matrix import model_choices, select_entries
from deploy.claims.run import ClaimsSettings, Ui, run_claims
from deploy.commands.common import console, finite, machine_output, warn
from deploy.commands.options import JSON
from deploy.core.errors import BadInputError, ClaimRefutedError
from deploy.core.shapes import parse_input_size

_STYLE = {"confirmed": "green", "refuted": "bold red", "inconclusive": "yellow", "reported": "cyan"}


class RichUi(Ui):
    """One bar per phase (checkpoints, exports, timing) with elapsed time and ETA."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: Optional[TaskID] = None
        self.phase_name = ""

    def phase(self, name: str, total: float) -> None:
        self.close()
        self.phase_name = name
        self.task = self.progress.add_task(name, total=max(total, 1e-9))

    @property
    def current(self) -> TaskID:
        """The task of the phase running now (``phase`` starts one)."""
        assert self.task is not None, "phase() starts a task first"
        return self.task

    def item(self, text: str) -> None:
        self.progress.update(self.current, description=f"[bold]{self.phase_name}[/]: {text}")

    def close(self) -> None:
        """Mark the last phase done."""
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[self.task].total,
                                 description=f"{self.phase_name} done")

    def advance(self, amount: float = 1.0) -> None:
        self.progress.advance(self.current, amount)

    def log(self, text: str) -> None:
        self.progress.console.print(f"  {text}", highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def budget(self, seconds: float) -> Iterator[None]:
        """Move the bar with the clock while an A/B comparison (bounded by ``seconds``) runs."""
        task = self.current
        start_done = self.progress.tasks[task].completed
        stop = threading.Event()
        t0 = time.perf_counter()

        def tick() -> None:
            while not stop.wait(0.5):
                self.progress.update(task, completed=start_done + min(time.perf_counter() - t0, seconds))

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.progress.update(task, completed=start_done + seconds)


def _batches(values: Optional[list[str]]) -> Optional[tuple[int, ...]]:
    if not values:
        return None
    out = []
    for item in values:
        for part in item.replace(" ", ",").split(","):
            if part:
                try:
                    out.append(int(part))
                except ValueError:
                    raise BadInputError(f"--batches {item!r}: give integers, e.g. --batches 1,64") from None
    return tuple(out)


def _summary(doc: dict) -> Table:
    batches = doc["settings"]["batches"]
    rows = {r["label"]: r for r in doc["latency_rows"]}
    table = Table(title=f"deploy claims — {doc['date']}, {doc['backend']['text']}, input "
                        f"{'x'.join(map(str, doc['settings']['input_shape']))}", show_lines=False)
    table.add_column("#", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for b in batches:
        table.add_column(f"ratio b={b} [95 % CI]", no_wrap=False)
    for c in doc["claims"]:
        cells = []
        for b in batches:
            m = rows.get(c["subject"], {}).get("by_batch", {}).get(str(b))
            cells.append("-" if m is None else f"{m['ratio']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
        style = _STYLE.get(c["verdict"], "")
        table.add_row(c["claim"], c["subject"], f"[{style}]{c['verdict']}[/]", *cells)
    return table


def claims(
    output_dir: Path = typer.Option(Path("claims"), "-o", "--output", help="Directory for claims.json/.md/.png, "
                                    "the checkpoints and the ONNX exports (created if missing)."),
    backend: str = typer.Option("auto", "--backend", help="auto (TensorRT when present, else ONNX Runtime CPU), ort, trt, "
                                "or torch (PyTorch eager on the checkpoints; --device cuda on a GPU: the papers' setting)."),
    device: str = typer.Option("cpu", "--device", help="Backend torch: cpu or cuda (exit 5 without a CUDA GPU)."),
    batches: Optional[list[str]] = typer.Option(None, "--batches", help="Batch sizes, repeatable or "
                                                "comma-separated (default 1,64; --quick: 1,8)."),
    batch: Optional[list[str]] = typer.Option(None, "--batch", hidden=True,
                                              help="Deprecated spelling of --batches."),
    quick: bool = typer.Option(False, "--quick", help="The same matrix at 64x64 with short timing budgets (CI)."),
    models: Optional[list[str]] = typer.Option(None, "--models", help="Subset, comma-separated, of: "
                                               f"{', '.join(model_choices())} (a kind's name selects all its "
                                               "models). The ResNet-50 baseline always runs."),
    input_size: Optional[str] = typer.Option(None, "--input-size", metavar="H|HxW",
                                             help="Input height and width, e.g. 224 or 224x160 (default: each "
                                                  "model's, 224; --quick 64)."),
    warmup: Optional[str] = typer.Option(None, "--warmup", help="Warm-up per comparison: runs (10) or seconds (2s)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="At most this many A/B pairs per comparison."),
    duration: Optional[float] = typer.Option(None, "--duration", callback=finite,
                                  help="Seconds per A/B comparison (default 15 at "
                                             "batch 1 and 60 above; --quick 2 and 3)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads (default: runtime's)."),
    exporter: Optional[str] = typer.Option(None, "--exporter", help="dynamo (default) or torchscript "
                                           "(default with --quick: faster)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights, parity inputs, timing input and bootstrap."),
    as_json: bool = JSON,
) -> None:
    """Verify the papers' efficiency claims on this machine: verdicts in DIR/claims.md (exit 6 if any is refuted)."""
    if batch:
        warn("--batch is deprecated for deploy claims (it takes several sizes): use --batches")
    settings = ClaimsSettings(output_dir=output_dir, backend=backend, device=device,
                              batches=_batches((batches or []) + (batch or [])), quick=quick,
                              input_size=parse_input_size(input_size), warmup=warmup, iters=iters, duration=duration,
                              threads=threads, seed=seed, exporter=exporter)
    entries = select_entries(models)
    settings.check()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
    ui = RichUi(progress)
    with machine_output(as_json, None) as machine:  # DIR/claims.json is always written; --json also prints it
        with progress:
            doc = run_claims(settings, entries, ui)
            ui.close()
        machine.emit(doc)
        _print_claims(doc, output_dir)
    refuted = [c for c in doc["claims"] if c["verdict"] == "refuted"]
    if refuted:
        names = ", ".join(f"claim {c['claim']} ({c['subject']})" for c in refuted)
        raise ClaimRefutedError(f"{len(refuted)} claim(s) refuted: {names}; the reasons are in "
                                f"{Path(output_dir) / 'claims.md'}")


def _print_claims(doc: dict, output_dir: Path) -> None:
    console.print(_summary(doc))
    for c in doc["claims"]:
        if c["verdict"] in ("refuted", "inconclusive"):
            console.print(f"[{_STYLE[c['verdict']]}]{c['verdict']}[/] {c['claim']}. {c['subject']}: {c['reason']}",
                          highlight=False, soft_wrap=True)
    out = Path(output_dir)
    console.print(f"wrote {out / 'claims.json'}, {out / 'claims.md'}, {out / 'claims.png'} "
                  f"in {doc['seconds']:.0f} s", highlight=False)
