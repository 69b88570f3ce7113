"""What the commands print about a pipeline run (torch-free: `deploy inspect` shares it): step
progress, the graph check and fold coverage, the parity table, held-out accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from deploy.commands.common import console

if TYPE_CHECKING:
    from deploy.pipeline.report import HeldOutAccuracy
    from validators.fold_coverage import FoldCoverageReport
    from validators.graph import GraphReport
    from validators.parity import ParityReport


class RichProgress:
    """The rich front end of ``deploy.core.progress.Progress``: a bar for the task running now (a pulse
    when its size is unknown) with elapsed time and ETA. With ``steps`` each finished task leaves a
    ``✓ name  seconds`` line (the export's steps); otherwise the bar stays, marked done."""

    def __init__(self, *, steps: bool = False, transient: bool = False) -> None:
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                             TimeRemainingColumn(), console=console, transient=transient or steps)
        self._task: Optional[TaskID] = None
        self._name, self.steps = "", steps

    def __enter__(self) -> "RichProgress":
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
        self._bar.stop()

    def _finish(self) -> None:
        if self._task is not None and not self.steps:
            total = self._bar.tasks[self._task].total
            self._bar.update(self._task, completed=total, description=f"{self._name} done")
        self._task = None

    def task(self, name: str, total: float | None = None) -> None:
        self._finish()
        self._name = name
        self._task = self._bar.add_task(f"[bold]{escape(name)}[/] …", total=total)

    def update(self, *, completed: float | None = None, advance: float = 0.0, text: str | None = None) -> None:
        if self._task is None:
            return
        description = f"[bold]{escape(self._name)}[/]: {escape(text)}" if text is not None else None
        self._bar.update(self._task, completed=completed, advance=advance or None, description=description)

    def done(self, seconds: float) -> None:
        if self.steps and self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
            console.print(f"  [green]✓[/] {escape(self._name):<13} {seconds:7.2f} s")

    def log(self, text: str) -> None:
        self._bar.console.print(f"  {text}", highlight=False, soft_wrap=True, markup=False)


def print_fold_coverage(coverage: FoldCoverageReport, strict_fold: bool) -> None:
    """The fold-coverage lines of `deploy export` and `deploy inspect`."""
    if coverage.clean:
        console.print("fold coverage: [green]clean[/] (no foldable structure, no BatchNormalization left)")
        return
    if coverage.findings:
        verdict = "[red]FLAGGED[/]" if strict_fold else "[yellow]WARNING[/] (--strict-fold makes export exit 4)"
        console.print(f"fold coverage: {verdict}: " + "; ".join(f.message for f in coverage.findings))
    else:
        console.print("fold coverage: nothing foldable left")
    if coverage.kept:
        console.print(f"  kept: {coverage.kept_summary()}")


def print_graph(graph: GraphReport, coverage: FoldCoverageReport | None = None) -> None:
    """The graph-check lines: verdict, opset and op histogram, params and MACs, TensorRT support."""
    ops = ", ".join(f"{op} {n}" for op, n in sorted(graph.op_histogram.items(), key=lambda kv: -kv[1]))
    macs = f"{graph.macs / 1e6:.2f} M" if graph.macs is not None else "unknown"
    verdict = "[green]clean[/]" if graph.ok else "[red]FLAGGED[/]: " + "; ".join(graph.reasons)
    if graph.ok and coverage is not None and not coverage.ok:  # never "clean" while foldable structure is left
        verdict = "standard ops only, but foldable structure is left (fold coverage below)"
    console.print(f"graph check: {verdict}")
    console.print(f"  opset {graph.opset}, {graph.nodes} nodes: {ops}")
    console.print(f"  params {graph.params / 1e6:.4f} M, MACs {macs} (from the ONNX graph), "
                  f"TensorRT {graph.tensorrt.get('version')} parser: "
                  + ("all ops supported" if not graph.unsupported_ops else "unsupported ops present"))
    if graph.int8_mac_share is not None:
        console.print(f"  INT8 (Q/DQ): {100 * graph.int8_mac_share:.1f} % of the MACs read int8 inputs")


def parity_title(parity: ParityReport) -> str:
    shape = "x".join(map(str, parity.input_shape))
    extra = "".join(f" + {'x'.join(map(str, s))} at batch {parity.batches[0]}" for s in parity.extra_input_shapes)
    return f"parity vs {parity.reference} ({parity.samples} inputs x batches {list(parity.batches)} at {shape}{extra})"


def parity_table(parity: ParityReport) -> Table:
    """One row per candidate, or per candidate and output when the model has several outputs."""
    multi = any(len(c.outputs) > 1 for c in parity.candidates)
    table = Table(title=parity_title(parity))
    for col in ("candidate",) + (("output",) if multi else ()) + ("max abs err", "max rel err", "min cosine",
                                                                   "top-1", "verdict"):
        table.add_column(col, justify="left" if col in ("candidate", "output", "verdict") else "right")
    for c in parity.candidates:
        beyond_outputs = not c.passed and all(o.passed for o in c.outputs)  # a crash, different output names
        for o in c.outputs if multi else [None]:
            src = o or c
            top1 = f"{100 * src.top1_agreement:.1f} %" if src.top1_agreement is not None else "n/a"
            if src.top1_excluded:
                top1 += f" ({src.top1_excluded} near-ties excluded)"
            passed = c.passed if o is None else o.passed and not beyond_outputs
            table.add_row(c.name, *((o.name,) if o is not None else ()), f"{src.max_abs_err:.3g}",
                          f"{src.max_rel_err:.3g}", f"{src.min_cosine:.7f}", top1,
                          "[green]ok[/]" if passed else "[red]FAILED[/]")
    return table


def print_accuracy(accuracy: Optional[HeldOutAccuracy]) -> None:
    """The held-out accuracy line of an export or a validation (top-1 with its 95 % interval)."""
    if accuracy is not None:
        console.print(f"held-out accuracy ({accuracy.data}): {accuracy.line()}", highlight=False, soft_wrap=True)
