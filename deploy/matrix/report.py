"""`deploy matrix`'s report: the typed ``MatrixReport``, its Markdown table, its JSON and its PNG chart.

One table row per format: status (✅ passed, ❎ failed its gate, ❌ failed, ➖ unavailable) with the
reason, file size, parity with the training form, top-1 accuracy on the data with its 95 % Wilson
interval, median and p99 latency, images/s and the latency ratio to PyTorch eager with its 95 %
interval. ``write_outputs`` writes DIR/matrix.md, matrix.json and matrix.png in one transaction.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from deploy.core.atomic import Transaction
from deploy.core.errors import AccuracyGateError, ConvDeployError, ParityError
from deploy.matrix.rows import FAILED, GATE, PASSED, UNAVAILABLE, MatrixRow

MATRIX_FORMAT = "convdeploy-matrix/1"
MATRIX_FILES = ("matrix.md", "matrix.json", "matrix.png")
ICONS = {PASSED: "✅", GATE: "❎", FAILED: "❌", UNAVAILABLE: "➖"}
COLUMNS = ("format", "status", "size", "parity (max abs err)", "top-1 accuracy [95 % CI]", "median ms", "p99 ms",
           "images/s", "ratio to eager [95 % CI]")


@dataclass
class MatrixReport:
    """Every row, the data and the machine: what the table, the JSON and the chart are made from."""

    model: str
    data: Optional[str]
    input_shape: tuple[int, ...]
    rows: list[MatrixRow]
    settings: dict[str, Any]
    device: str
    versions: dict[str, str]
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[MatrixRow]:
        return [r for r in self.rows if r.status in (GATE, FAILED)]

    def to_dict(self) -> dict[str, Any]:
        return {"format": MATRIX_FORMAT, "model": self.model, "data": self.data, "input_shape": list(self.input_shape),
                "device": self.device, "versions": self.versions, "settings": self.settings,
                "rows": [r.to_dict() for r in self.rows], "seconds": self.seconds, "outputs": dict(self.outputs),
                "summary": {s: sum(r.status == s for r in self.rows) for s in
                            ("passed", GATE, FAILED, UNAVAILABLE)}}

    def gate_error(self) -> Optional[ConvDeployError]:
        """Exit 3 when a row failed its gate or failed (None: every row that ran passed)."""
        bad = self.failed
        if not bad:
            return None
        names = "; ".join(f"{r.spec.key}: {r.reason}" for r in bad)
        kind = AccuracyGateError if all("accuracy" in r.reason and "parity" not in r.reason for r in bad) else ParityError
        return kind(f"{len(bad)} format(s) did not pass: {names}")


def _size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def cells(row: MatrixRow, reason: bool = True) -> list[str]:
    """The row's cells, in ``COLUMNS`` order (with ``reason``, the status cell carries it)."""
    status = f"{ICONS[row.status]} {row.status}" + (f": {row.reason}" if row.reason and reason else "")
    p = row.parity
    parity = "-" if p is None else f"{p.max_abs_err:.2g}" + {True: " ok", False: " FAILED", None: ""}[p.passed]
    acc = "-" if row.accuracy is None else row.accuracy.text()
    lat = row.latency
    if lat is None:
        return [row.spec.title, status, _size(row.size_bytes), parity, acc, "-", "-", "-", "-"]
    ratio = f"{lat.ratio:.3f} [{lat.ci_low:.3f}, {lat.ci_high:.3f}]" + (" (A/A)" if row.spec.reference else "")
    return [row.spec.title, status, _size(row.size_bytes), parity, acc, f"{lat.median_ms:.3f}", f"{lat.p99_ms:.3f}",
            f"{lat.images_per_s:,.1f}", ratio]


def render_markdown(report: MatrixReport) -> str:
    shape = "x".join(map(str, report.input_shape))
    lines = [f"# deploy matrix: {Path(report.model).name}", "",
             f"Input {shape}, timing batch {report.settings['batch']}, on {report.device}; data: "
             f"{report.data or 'none (no accuracy)'}. Parity, accuracy and speed are held to the training form on "
             "PyTorch eager; its own ratio is an A/A (itself against itself).", "",
             "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells(r)) + " |" for r in report.rows]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in report.versions.items())}. "
              f"Total {report.seconds:.0f} s.", ""]
    return "\n".join(lines)


def render_png(report: MatrixReport) -> bytes:
    """Images/s per format and the latency ratio to eager with its interval, side by side."""
    import matplotlib  # noqa: PLC0415 - optional and slow to import: only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after choosing the Agg backend above

    rows = [r for r in report.rows if r.latency is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * max(len(rows), 3) + 1.6), sharey=True)
    names = [r.spec.title for r in rows]
    colours = ["tab:green" if r.status == PASSED else "tab:orange" for r in rows]
    left.barh(range(len(rows)), [r.latency.images_per_s for r in rows if r.latency], color=colours)
    left.set_xlabel("images/s (higher is faster)")
    for y, r in enumerate(rows):
        lat = r.latency
        assert lat is not None
        right.errorbar(lat.ratio, y, xerr=[[lat.ratio - lat.ci_low], [lat.ci_high - lat.ratio]], fmt="o",
                       color=colours[y], capsize=3)
    right.axvline(1.0, color="grey", lw=1)
    right.set_xlabel("latency ratio to PyTorch eager (95 % CI; lower is faster)")
    left.set_yticks(range(len(rows)), names)
    left.invert_yaxis()
    fig.suptitle(f"deploy matrix: {Path(report.model).name}, batch {report.settings['batch']}, {report.device}",
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(report: MatrixReport, out_dir: Path) -> dict[str, str]:
    """DIR/matrix.md, matrix.png and matrix.json (which records the others' sha256), both-or-neither."""
    paths = {name: out_dir / name for name in MATRIX_FILES}
    with Transaction() as tx:
        hashes = {"matrix.md": tx.stage_bytes(paths["matrix.md"], render_markdown(report).encode()),
                  "matrix.png": tx.stage_bytes(paths["matrix.png"], render_png(report))}
        report.outputs = {name: str(paths[name]) for name in MATRIX_FILES}
        doc = report.to_dict() | {"sha256": hashes}
        tx.stage_bytes(paths["matrix.json"], (json.dumps(doc, indent=2, default=str) + "\n").encode())
        tx.commit()
    return report.outputs
