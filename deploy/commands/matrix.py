"""`deploy matrix MODEL.pt`: the model in every format this machine can run, one row each, held to its
training form (``deploy.matrix.run.run_matrix``); this module parses options and prints the table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from deploy.commands.common import console, finite, machine_output, warn
from deploy.commands.options import (
    ATOL,
    EXPORTER,
    INPUT_SIZE,
    JSON,
    JSON_FILE,
    OPSET,
    PREPROCESS,
    REWRITE,
    RTOL,
    SEED,
    SIMPLIFY,
    STRICT,
)
from deploy.commands.printing import RichProgress
from deploy.matrix.formats import BY_KEY
from deploy.matrix.report import COLUMNS, MatrixReport, cells
from deploy.matrix.rows import PASSED, UNAVAILABLE
from deploy.matrix.run import MatrixOptions, run_matrix

_STYLE = {PASSED: "green", UNAVAILABLE: "dim"}


def _print(report: MatrixReport) -> None:
    shape = "x".join(map(str, report.input_shape))
    table = Table(title=f"deploy matrix — {Path(report.model).name}, input {shape}, batch "
                        f"{report.settings['batch']}, {report.device}", show_lines=True)
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in ("size", "median ms", "p99 ms", "images/s") else "left")
    for row in report.rows:
        style = _STYLE.get(row.status, "red")
        table.add_row(*cells(row, reason=False), style=style)
    console.print(table)
    for row in report.rows:
        if row.reason:
            console.print(f"{row.spec.key}: {row.status}: {row.reason}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"data: {report.data or 'none (give --data for accuracy)'}; parity and ratios are against the "
                  "training form on PyTorch eager (its own ratio is an A/A)", highlight=False, soft_wrap=True)
    for name, path in report.outputs.items():
        console.print(f"wrote {path}" if name == "matrix.md" else f"      {path}", highlight=False, soft_wrap=True)


def matrix(
    model: Path = typer.Argument(..., help="The trained model.pt."),
    data: Optional[str] = typer.Option(None, "--data", help="Labelled images for accuracy: an image folder (one "
                                       "sub-folder per class), an .npz with x and y, or digits."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration images of the INT8 rows (not the --data "
                                        "images)."),
    formats: Optional[list[str]] = typer.Option(None, "--formats", help="Rows to run, comma-separated or repeated "
                                                f"(default all): {', '.join(BY_KEY)}. The training form always runs."),
    output_dir: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory for matrix.md, matrix.json, "
                                              "matrix.png and the artifacts (default: none written)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Images per timed batch."),
    eval_batch: int = typer.Option(32, "--eval-batch", min=1, help="Images per batch for accuracy."),
    duration: float = typer.Option(3.0, "--duration", callback=finite, help="Seconds of interleaved timing per row."),
    warmup: str = typer.Option("0.5s", "--warmup", help="Warm-up per row: runs (10) or seconds (0.5s)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads (ONNX Runtime, PyTorch)."),
    max_drop: float = typer.Option(1.0, "--max-drop", callback=finite, metavar="POINTS",
                                   help="A row fails its gate when its top-1 accuracy is more than POINTS percentage "
                                        "points below the training form's."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N images only."),
    samples: int = typer.Option(8, "--samples", min=1, help="Seeded random inputs for parity."),
    seed: int = SEED,
    preprocess: Optional[str] = PREPROCESS,
    input_size: Optional[str] = INPUT_SIZE,
    opset: Optional[int] = OPSET,
    exporter: str = EXPORTER,
    atol: Optional[float] = ATOL,
    rtol: Optional[float] = RTOL,
    rewrite: bool = REWRITE,
    simplify: bool = SIMPLIFY,
    strict: bool = STRICT,
    as_json: bool = JSON,
    json_file: Optional[Path] = JSON_FILE,
) -> None:
    """One model in every format this machine can run: status, size, parity, accuracy, latency (exit 3 if a row fails its gate).

    Rows: PyTorch eager (training form, folded), ONNX Runtime fp32 and INT8, and on a GPU PyTorch CUDA
    fp32/fp16/bf16 and TensorRT fp32/fp16/INT8. Every row is held to the training form on PyTorch eager:
    parity on seeded inputs, top-1 accuracy on --data with its 95 % interval, and speed interleaved with it.
    Export options (--input-size, --opset, --exporter, --atol, --rtol, …) pass through to the export.
    """
    opts = MatrixOptions(model=model, data=data, calib=calib, formats=formats, output_dir=output_dir, batch=batch,
                         eval_batch=eval_batch, duration=duration, warmup=warmup, threads=threads, max_drop=max_drop,
                         preprocess=preprocess, limit=limit, samples=samples, seed=seed, input_size=input_size,
                         opset=opset, exporter=exporter, atol=atol, rtol=rtol, rewrite=rewrite, simplify=simplify,
                         strict=strict)
    data_path = None if data is None or data.startswith("digits") else Path(data)
    reads = {"the model": model, "the data": data_path}
    with machine_output(as_json, json_file, reads=reads) as out:
        with RichProgress(transient=True) as progress:
            report = run_matrix(opts, progress)
        _print(report)
        out.emit(report.to_dict())
    error = report.gate_error()
    if error is not None:
        if output_dir is None:
            warn("give -o DIR to keep the table, the JSON and the chart")
        raise error
