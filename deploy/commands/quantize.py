"""`deploy quantize MODEL.onnx --calib DATA --eval DATA -o OUT.onnx`: INT8 Q/DQ ONNX, gated on accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from deploy.commands.common import console, finite, machine_output, warn
from deploy.commands.options import JSON, JSON_FILE
from deploy.commands.printing import RichProgress
from deploy.core.errors import BadInputError
from deploy.quantize.recipes import METHODS, TARGETS
from deploy.quantize.report import QuantizeReport
from deploy.quantize.run import QuantizeGateError, QuantizeOptions, run_quantize

INT8 = "INT8"

CALIB = typer.Option(None, "--calib", metavar="DATA", rich_help_panel=INT8,
                     help="Calibration images: an image folder, a flat folder, an .npz (x, optional y) or digits:train.")
EVAL = typer.Option(None, "--eval", metavar="DATA", rich_help_panel=INT8,
                    help="Held-out labelled images for the accuracy gate, disjoint from --calib (e.g. digits:test).")
TARGET = typer.Option("tensorrt", "--target", rich_help_panel=INT8,
                      help=f"{' or '.join(TARGETS)}: symmetric int8 Q/DQ around the weighted ops, as TensorRT fuses "
                           "them; or what ONNX Runtime's CPU kernels run fastest (unsigned activations).")
METHOD = typer.Option("minmax", "--method", rich_help_panel=INT8, help=f"Calibration: {', '.join(METHODS)}.")
MAX_DROP = typer.Option(1.0, "--max-drop", metavar="POINTS", callback=finite, rich_help_panel=INT8,
                        help="Gate: refuse (exit 3) an INT8 model whose top-1 is more than POINTS percentage points "
                             "below the fp32 model's on --eval (unlabelled data: top-1 changes).")
KEEP_FLOAT = typer.Option(None, "--keep-float", metavar="auto|NODE,...", rich_help_panel=INT8,
                          help="Nodes kept in float: auto keeps the most sensitive (by SQNR) one at a time until the "
                               "gate passes; or name them (deploy inspect OUT.onnx --layers); both: auto,NODE,...")
KEEP_FLOAT_MAX = typer.Option(8, "--keep-float-max", min=1, max=64, rich_help_panel=INT8,
                              help="With --keep-float auto: keep at most this many nodes in float.")


def quantize_options(calib: Optional[str], eval_data: Optional[str], keep_float: Optional[str],
                     **options: Any) -> QuantizeOptions:
    """The QuantizeOptions of the INT8 flags (``--keep-float auto|NODE,…`` parsed), both data sets required."""
    if not calib or not eval_data:
        raise BadInputError("give --calib DATA and --eval DATA: calibration images and held-out labelled images "
                            "for the gate")
    names = [n.strip() for n in (keep_float or "").split(",") if n.strip()]
    return QuantizeOptions(calib=calib, eval=eval_data, keep_float=tuple(n for n in names if n != "auto"),
                           auto_keep="auto" in names, **options)


def print_quantize(report: QuantizeReport) -> None:
    """The keep-float steps, the gate and the sizes of one quantization."""
    console.print(f"calibrated ({report.method}) on {report.calib.images} images of {report.calib.description}; gated on "
                  f"{report.eval.images} images of {report.eval.description}",
                  highlight=False, markup=False, soft_wrap=True)
    for text in report.warnings:
        warn(text)
    table = Table(title=f"deploy quantize --target {report.target}")
    for col in ("step", "kept in float", "SQNR dB", "int8 top-1", "drop (points)", "agreement", "gate"):
        table.add_column(col)
    for i, step in enumerate(report.steps):
        g = step.gate
        table.add_row(str(i), step.added or ("-" if not step.kept else ", ".join(step.kept)),
                      f"{step.sqnr_db:.1f}" if step.sqnr_db is not None else "",
                      g.int8_top1.text() if g.int8_top1 else "n/a", f"{g.loss_points:.2f}", g.comparison.agreement.text(),
                      "passed" if g.passed else "failed")
    console.print(table)
    fp32 = f"fp32 top-1 {report.fp32_top1.text()}; " if report.fp32_top1 else ""
    console.print(f"{fp32}{report.final.gate.text()}", highlight=False, markup=False, soft_wrap=True)
    sqnr = ", ".join(f"{k} {v:.1f} dB" for k, v in report.output_sqnr.items())
    console.print(f"output SQNR: {sqnr}; {report.quantized_nodes} nodes int8, {report.float_nodes} float; "
                  f"{report.sizes.get('fp32', 0) / 1e6:.2f} MB -> {report.sizes.get('int8', 0) / 1e6:.2f} MB",
                  highlight=False, markup=False, soft_wrap=True)
    if report.sensitive:
        console.print("most sensitive: " + "; ".join(s.text() for s in report.sensitive[:3]), highlight=False,
                      markup=False, soft_wrap=True)


def quantize_command(
    model: Path = typer.Argument(..., help="The folded fp32 MODEL.onnx (as `deploy export --fold` writes it)."),
    output: Path = typer.Option(..., "-o", "--output", help="The INT8 OUT.onnx (its report: OUT.report.json)."),
    calib: Optional[str] = CALIB,
    eval_data: Optional[str] = EVAL,
    target: str = TARGET,
    method: str = METHOD,
    max_drop: float = MAX_DROP,
    keep_float: Optional[str] = KEEP_FLOAT,
    keep_float_max: int = KEEP_FLOAT_MAX,
    preprocess: Optional[str] = typer.Option(None, "--preprocess", metavar="RECIPE", help="Preprocessing over the "
                                             "model's recorded recipe (as `deploy eval --preprocess`)."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Class names, one per line, in output order."),
    batch: int = typer.Option(32, "--batch", min=1, max=4096, help="Images per batch."),
    calib_limit: Optional[int] = typer.Option(None, "--calib-limit", min=1, help="Calibrate on the first N images."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", min=1, help="Gate on the first N images."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime intra-op threads."),
    allow_unfolded: bool = typer.Option(False, "--allow-unfolded", help="Quantize a graph that still holds foldable "
                                        "structure (to measure what folding first buys)."),
    report: Optional[Path] = typer.Option(None, "--report", help="The report path (default OUT.report.json)."),
    as_json: bool = JSON,
    json_file: Optional[Path] = JSON_FILE,
) -> None:
    """INT8 Q/DQ ONNX calibrated on your images and gated on its accuracy against the fp32 model.

    Standard operators only, per-channel int8 weights; --target tensorrt writes symmetric int8 (zero points 0) for
    TensorRT 10/11's explicit quantization. Nothing is written unless the gate passes. Exit codes: 2 bad data or
    options, 3 the gate failed (the most sensitive layers are named).
    """
    opts = quantize_options(calib, eval_data, keep_float, target=target, method=method, max_drop=max_drop,
                            max_kept=keep_float_max, preprocess=preprocess, classes=classes, batch=batch,
                            calib_limit=calib_limit, eval_limit=eval_limit, threads=threads,
                            allow_unfolded=allow_unfolded, report=report)
    reads = {"the fp32 model": model, "the classes file": classes}
    with machine_output(as_json, json_file, reads=reads) as out:
        try:
            with RichProgress(transient=True) as progress:
                result = run_quantize(model, output, opts, progress=progress)
        except QuantizeGateError as exc:
            print_quantize(exc.report)
            out.emit(exc.report.to_dict())
            raise
        print_quantize(result)
        console.print(f"wrote {output} and {result.outputs['report']['path']}",
                      highlight=False, markup=False, soft_wrap=True)
        out.emit(result.to_dict())
