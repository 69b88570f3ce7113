"""`deploy eval ARTIFACT --data DATA`: accuracy of a deployed artifact on the user's images, with
intervals, optionally against another artifact on the same images, gated for CI."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from deploy.commands.common import console, machine_output, warn
from deploy.commands.options import JSON, JSON_FILE, SEED
from deploy.commands.printing import RichProgress
from deploy.core.errors import AccuracyGateError, BadInputError
from deploy.evaluation.run import ArtifactScore, EvalOptions, EvalReport, evaluate, recipe_text

_GATE = "Gate"


def _row(table: Table, label: str, s: ArtifactScore) -> None:
    acc = s.accuracy
    table.add_row(label, Path(s.artifact).name, str(s.runtime.get("runtime", "")),
                  acc.top1.text() if acc else "n/a (unlabelled)", acc.top5.text() if acc and acc.top5 else "n/a",
                  str(s.images), f"{s.images_per_s:,.1f}")


def _print(report: EvalReport) -> None:
    console.print(f"data: {report.data}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"preprocessing: {recipe_text(report.recipe)}", highlight=False, markup=False, soft_wrap=True)
    table = Table(title="deploy eval (95 % Wilson intervals)")
    for col in ("", "artifact", "runtime", "top-1", "top-5", "images", "images/s"):
        table.add_column(col, justify="right" if col in ("images", "images/s") else "left")
    _row(table, "A", report.model)
    if report.vs is not None:
        _row(table, "B (--vs)", report.vs)
    console.print(table)
    c = report.comparison
    if c is not None:
        diff = f", accuracy A - B {c.difference.text()} (paired bootstrap), McNemar exact p = {c.mcnemar_p:.3g}" \
            if c.difference is not None and c.mcnemar_p is not None else ""
        console.print(f"A vs B: top-1 agreement {c.agreement.text()}{diff}; {len(c.flips)} images flip", highlight=False)
        for flip in c.flips[:5]:
            label = f" (label {flip['label']})" if flip["label"] is not None else ""
            console.print(f"  {flip['image']}: A {flip['a']}, B {flip['b']}{label}", highlight=False, markup=False)
    if report.skipped:
        warn(f"{len(report.skipped)} unreadable image(s) skipped (--skip-bad): {', '.join(report.skipped[:3])}"
             + (" …" if len(report.skipped) > 3 else ""))


def _gate(report: EvalReport, min_accuracy: Optional[float], max_drop: Optional[float]) -> None:
    acc = report.model.accuracy
    if (min_accuracy is not None or max_drop is not None) and acc is None:
        raise BadInputError("--min-accuracy and --max-drop need labelled data (an image folder with class folders, "
                            "an .npz with y, or digits)")
    if min_accuracy is not None and acc is not None and 100 * acc.top1.value < min_accuracy:
        raise AccuracyGateError(f"top-1 accuracy {acc.top1.text()} is below --min-accuracy {min_accuracy:g} %")
    if max_drop is not None:
        if report.vs is None or report.vs.accuracy is None or acc is None:
            raise BadInputError("--max-drop compares with a reference: give --vs REFERENCE")
        drop = 100 * (report.vs.accuracy.top1.value - acc.top1.value)
        if drop > max_drop:
            c = report.comparison
            interval = f" (A - B {c.difference.text()})" if c is not None and c.difference is not None else ""
            raise AccuracyGateError(f"top-1 accuracy drops {drop:.2f} points against {Path(report.vs.artifact).name}"
                                    f"{interval}, more than --max-drop {max_drop:g}")


def eval_command(
    artifact: Path = typer.Argument(..., help="model.pt (PyTorch), model.onnx (ONNX Runtime) or engine.plan (TensorRT)."),
    data: str = typer.Option(..., "--data", help="An image folder (one sub-folder per class; JPEG/PNG/WebP), a flat "
                             "folder of images (unlabelled), an .npz with x (N,C,H,W) and optional y, or digits."),
    vs: Optional[Path] = typer.Option(None, "--vs", help="A reference artifact evaluated on the same images: "
                                      "agreement, accuracy difference with its paired interval, McNemar's p, flips."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Class names, one per line, in the model's output "
                                           "order (default: the sorted folder names)."),
    preprocess: Optional[str] = typer.Option(None, "--preprocess", metavar="RECIPE", help="Preprocessing over the "
                                             "artifact's recorded recipe: a preset (imagenet, digits) and/or key=value "
                                             "pairs separated by ';' (resize, crop, color, channels, scale, mean, std, "
                                             "interpolation)."),
    batch: int = typer.Option(32, "--batch", min=1, help="Images per batch (a graph with a fixed batch takes its own)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N images only."),
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="Evaluate N images drawn at random (--seed)."),
    seed: int = SEED,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count unreadable images instead of exit 2."),
    device: str = typer.Option("cpu", "--device", help="model.pt: cpu or cuda (exit 5 without a CUDA GPU)."),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="model.pt: the folded deploy form (default) or the "
                              "training form."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads (ONNX Runtime, PyTorch)."),
    min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy", metavar="PERCENT", rich_help_panel=_GATE,
                                                 help="Exit 3 when top-1 accuracy is below PERCENT."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", metavar="POINTS", rich_help_panel=_GATE,
                                             help="With --vs: exit 3 when top-1 accuracy is more than POINTS "
                                                  "percentage points below the reference's."),
    as_json: bool = JSON,
    json_file: Optional[Path] = JSON_FILE,
) -> None:
    """Accuracy of an artifact on your images: top-1/top-5 with 95 % intervals, images/s; --vs compares two.

    The preprocessing recipe comes from the artifact (recorded by `deploy zoo train` and `deploy export`);
    --preprocess overrides it. Exit codes: 2 bad data or options, 3 a gate failed.
    """
    opts = EvalOptions(preprocess=preprocess, classes=classes, batch=batch, limit=limit, sample=sample, seed=seed,
                       skip_bad=skip_bad, device=device, fold=fold, threads=threads)
    data_path = None if data.startswith("digits") else Path(data)
    reads = {"the evaluated artifact": artifact, "the --vs artifact": vs, "the data": data_path,
             "the classes file": classes}
    with machine_output(as_json, json_file, reads=reads) as out:
        with RichProgress(transient=True) as progress:
            report = evaluate(artifact, data, vs=vs, options=opts, progress=progress)
        _print(report)
        out.emit(report.to_dict())
    _gate(report, min_accuracy, max_drop)
