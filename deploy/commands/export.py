"""`deploy export` and `deploy validate`: the main job and its parity check (`deploy inspect` is its own module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from deploy.commands.common import JSON, console, detail, finite, machine_output, warn
from deploy.commands.conv_options import conv_help, conv_opt_help, conv_options, ratio_help
from deploy.commands.inspect import print_fold_coverage, print_graph
from deploy.core.errors import BadInputError
from deploy.pipeline.export import ExportOptions, ExportOutcome, StepLog, run_export
from deploy.pipeline.report import RunReport
from deploy.pipeline.validate import run_validate
from validators.onnx_file import require_regular_file
from validators.parity import ParityReport

_MODEL = typer.Argument(..., help="model.pt: a convdeploy checkpoint, a bare state_dict (with --arch/--conv, or "
                        "--model-class), a reference checkpoint (SCNet, SCNet-v1d, SPConv, DO-Conv), a pickled module "
                        "(--trust-pickle) or a torch.export .pt2 file.")
_ARCH = typer.Option(None, "--arch", help="Arch of a bare state_dict.")
_MODEL_CLASS = typer.Option(None, "--model-class", metavar="PACKAGE.MODULE:CLASS",
                            help="Your own nn.Module class a bare state_dict is loaded into (strictly); it must be "
                                 "importable (run from its directory or set PYTHONPATH).")
_MODEL_ARGS = typer.Option(None, "--model-args", metavar="JSON",
                           help="Arguments of --model-class: a JSON object (keywords) or array (positional).")
_INPUT_SIZE = typer.Option(None, "--input-size", metavar="H|HxW",
                           help="Input height and width, e.g. 224 or 64x48 (default: the checkpoint's).")
_DYNAMIC = typer.Option(None, "--dynamic", metavar="batch|hw|batch,hw",
                        help="Symbolic axes of the ONNX input (default batch; hw: height and width, then parity also "
                             "runs at twice H and W).")
_STRICT_FOLD = typer.Option(False, "--strict-fold", help="Fail (exit 4) when fold coverage finds foldable structure left "
                            "in the graph (BatchNorm after a conv, run-time conv weights, parallel branches summed); "
                            "without it they are a warning.")
_INPUT_SHAPE = typer.Option(None, "--input-shape", metavar="CxHxW",
                            help="The whole input shape, e.g. 3x64x48 (for models that do not record it).")
_CONV = typer.Option(None, "--conv", help=conv_help("Conv kind of a bare state_dict"))
_CONV_OPT = typer.Option(None, "--conv-opt", help=conv_opt_help())
_RATIO = typer.Option(None, "--ratio", callback=finite, help=ratio_help())


def _step_log() -> tuple[StepLog, Any]:
    """A StepLog that shows a spinner while a step runs and a line when it is done."""
    status = console.status("starting")

    def on_start(name: str) -> None:
        status.update(f"[bold]{name}[/] …")

    def on_done(name: str, seconds: float) -> None:
        console.print(f"  [green]✓[/] {name:<13} {seconds:7.2f} s")

    return StepLog(on_start, on_done), status


def _parity_title(parity: ParityReport) -> str:
    shape = "x".join(map(str, parity.input_shape))
    extra = "".join(f" + {'x'.join(map(str, s))} at batch {parity.batches[0]}" for s in parity.extra_input_shapes)
    return f"parity vs {parity.reference} ({parity.samples} inputs x batches {list(parity.batches)} at {shape}{extra})"


def _parity_table(parity: ParityReport) -> Table:
    """One row per candidate, or per candidate and output when the model has several outputs."""
    multi = any(len(c.outputs) > 1 for c in parity.candidates)
    table = Table(title=_parity_title(parity))
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


def _print_accuracy(accuracy: Optional[dict[str, Any]]) -> None:
    if not accuracy:
        return
    names = [k for k in ("training_form", "folded", "onnxruntime") if k in accuracy]
    parts = " | ".join(f"{n.replace('_', '-')} {100 * accuracy[n]:.2f} %" for n in names)
    console.print(f"held-out accuracy ({accuracy['dataset']} {accuracy['split']} split, {accuracy['images']} images): {parts}")


def _warn_pickle(trust_pickle: bool) -> None:
    """Say that a pickle runs code: a UserWarning would be filtered by the CLI, so print it."""
    if trust_pickle:
        warn("--trust-pickle: a pickled module runs code from the file while it loads; use it only for files "
             "you trust")


def export(
    model: Path = _MODEL,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX file to write (default: MODEL with .onnx)."),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="Fold first: CoC/DO-Conv into convs, every module with "
                              "fuse()/reparameterize()/switch_to_deploy(), every Conv+BN pair."),
    rewrite: bool = typer.Option(True, "--rewrite/--no-rewrite", help="With --fold: the exact deploy rewrites too "
                                 "(SPConv/IC absorb the BN after them, SCNet's static sizes; each proven in "
                                 "float64). --no-rewrite exports the folded graph without them, to compare."),
    rewrite_diff: bool = typer.Option(True, "--rewrite-diff/--no-rewrite-diff", help="When a layer was rewritten, "
                                      "export the model once more without the rewrites to report what they changed "
                                      "(node counts; the export step runs twice)."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset: dynamo 18..23 (default 18), torchscript "
                                 "9..20 (default 17); others exit 2."),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' (axis named 'batch') or a fixed batch size."),
    input_size: Optional[str] = _INPUT_SIZE,
    input_shape: Optional[str] = _INPUT_SHAPE,
    dynamic: Optional[str] = _DYNAMIC,
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (torch.export, opset 18) or torchscript (opset 17)."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Run onnxsim (kept only if outputs still "
                                  "match; skipped with --no-fold, which keeps the graph as exported)."),
    atol: Optional[float] = typer.Option(None, "--atol", callback=finite,
                                  help="Absolute part of the parity bound (default 0)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", callback=finite,
                                  help="Bound relative to max|ref| (default 1e-4)."),
    samples: int = typer.Option(8, "--samples", help="Seeded random inputs per batch size for parity."),
    seed: int = typer.Option(0, "--seed", help="Seed of the parity inputs and the fold probe."),
    report: Optional[Path] = typer.Option(None, "--json-file", "--report", metavar="PATH", help="The report JSON, "
                                          "written with OUT.onnx, both or neither (default: OUT.report.json)."),
    as_json: bool = typer.Option(False, "--json", help="Also print the report JSON on stdout; the human text goes "
                                 "to stderr."),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="Fail (exit 4) on graph-check findings; "
                                "--no-strict writes the model and records them."),
    strict_fold: bool = _STRICT_FOLD,
    arch: Optional[str] = _ARCH,
    model_class: Optional[str] = _MODEL_CLASS,
    model_args: Optional[str] = _MODEL_ARGS,
    conv: Optional[str] = _CONV,
    conv_opt: Optional[list[str]] = _CONV_OPT,
    ratio: Optional[float] = _RATIO,
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a pickled whole module (runs code from the file)."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="Also build a TensorRT engine.plan (GPU + TensorRT 10 or 11) "
                                          "and check it against ONNX Runtime; exit 5 where TensorRT is missing."),
    fp16: bool = typer.Option(False, "--fp16", help="Engine in fp16 (parity bound 1e-2 * max|ref|; "
                              "top-1 >= 99 % on the rows whose margin exceeds it)."),
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help="Engine profile: smallest batch (default 1)."),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="Engine profile: batch TensorRT tunes for."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Engine profile: largest batch."),
    workspace: Optional[float] = typer.Option(None, "--workspace", callback=finite,
                                  help="Engine: builder workspace limit in GiB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Engine: load/save tactic timings here."),
) -> None:
    """Fold MODEL.pt, export ONNX, simplify, check the graph, prove parity; write OUT.onnx + report.

    OUT.onnx and OUT.report.json are written together at the end, or neither is.

    Every output of the model is compared by name. Exit codes: 2 bad input, 3 parity failed (names the
    output and the first diverging layer), 4 graph check failed (or, with --strict-fold, fold coverage).
    """
    if exporter not in ("dynamo", "torchscript"):
        raise BadInputError(f"--exporter must be dynamo or torchscript, got {exporter!r}")
    kwargs = conv_options(conv, conv_opt, ratio)
    opts = ExportOptions(
        checkpoint=model, output=output, report=report, fold=fold, rewrite=rewrite, compare_rewrites=rewrite_diff,
        opset=opset, batch=batch, input_size=input_size, input_shape=input_shape, dynamic=dynamic, exporter=exporter,
        simplify=simplify, atol=atol, rtol=rtol, samples=samples, seed=seed, strict=strict, strict_fold=strict_fold,
        arch=arch, conv=conv, conv_kwargs=kwargs, trust_pickle=trust_pickle, model_class=model_class,
        model_args=model_args,
        engine=engine, fp16=fp16, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace=workspace, timing_cache=timing_cache,
    )
    _warn_pickle(trust_pickle)
    with machine_output(as_json, None) as out:
        log, status = _step_log()
        console.print(f"[bold]deploy export[/] {model} ({'fold' if fold else 'no fold'}, {exporter} exporter)")
        with status:
            outcome = run_export(opts, log)
        _print_export(outcome)
        out.emit(json.loads(outcome.report_path.read_text()))  # the very record the pair holds


def _print_export(outcome: ExportOutcome) -> None:
    rep = outcome.report
    if rep.fold is not None:
        rewrites = len(rep.fold.rewrites)
        console.print(f"fold: {len(rep.fold.rows) - rewrites} layers folded, {rewrites} rewritten, worst float64 rel "
                      f"error {rep.fold.worst_rel_error:.2e}")
    if rep.rewrites is not None:
        console.print(f"rewrites: {rep.rewrites.summary()}")
    if rep.simplify is not None:
        if rep.simplify.applied:
            console.print(rep.simplify.summary())
        else:
            warn(f"onnxsim NOT applied, the unsimplified graph is kept: {rep.simplify.reason}")
    if rep.export is not None:
        for line in rep.export.captured_warnings + rep.export.captured_stdout.splitlines():
            detail(f"  exporter: {line}")
    print_graph(outcome.graph, outcome.fold_coverage)
    print_fold_coverage(outcome.fold_coverage, bool(rep.options.get("strict_fold")))
    console.print(_parity_table(outcome.parity))
    _print_accuracy(rep.accuracy)
    if rep.engine:
        engine = rep.engine["parity"]["candidates"][0]
        top1 = f"{100 * engine['top1_agreement']:.1f} %" if engine["top1_agreement"] is not None else "n/a"
        decisive = sum(o["top1_rows"] for o in engine["outputs"])
        console.print(f"TensorRT engine {rep.engine['path']}: vs onnxruntime max rel err {engine['max_rel_err']:.3g}, "
                      f"top-1 {top1} on {decisive} decisive rows ({engine['top1_excluded']} near-ties excluded; "
                      f"tolerance {rep.engine['parity']['tolerance']['name']})")
        for note in rep.engine["metadata"].get("notes", []):
            warn(note)
    console.print(f"wrote {outcome.onnx_path} and {outcome.report_path} (total {sum(rep.seconds.values()):.1f} s)")


def validate(
    model: Path = _MODEL,
    onnx_file: Path = typer.Argument(..., metavar="MODEL.onnx", help="The exported ONNX model to check."),
    samples: int = typer.Option(8, "--samples", help="Seeded random inputs per batch size."),
    seed: int = typer.Option(0, "--seed", help="Seed of the inputs."),
    atol: Optional[float] = typer.Option(None, "--atol", callback=finite,
                                  help="Absolute part of the bound (default 0)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", callback=finite,
                                  help="Bound relative to max|ref| (default 1e-4)."),
    input_size: Optional[str] = _INPUT_SIZE,
    input_shape: Optional[str] = _INPUT_SHAPE,
    report: Optional[Path] = typer.Option(None, "--json-file", "--report", metavar="PATH",
                                          help="Write the report JSON here (atomically)."),
    as_json: bool = JSON,
    arch: Optional[str] = _ARCH,
    model_class: Optional[str] = _MODEL_CLASS,
    model_args: Optional[str] = _MODEL_ARGS,
    conv: Optional[str] = _CONV,
    conv_opt: Optional[list[str]] = _CONV_OPT,
    ratio: Optional[float] = _RATIO,
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a pickled whole module (runs code)."),
) -> None:
    """Prove MODEL.onnx computes what MODEL.pt computes: training form vs folded vs ONNX Runtime.

    Every output is compared by name, at twice H and W too when the graph's H/W are dynamic; exit 3 if
    any differs. The report (--json, --json-file) is written in either case.
    """
    if not onnx_file.exists():
        raise BadInputError(f"{onnx_file}: no such ONNX file; export one with `deploy export`")
    require_regular_file(onnx_file)
    kwargs = conv_options(conv, conv_opt, ratio)
    _warn_pickle(trust_pickle)
    with machine_output(as_json, None) as out:
        with console.status("checking parity …"):
            rep: RunReport = run_validate(
                model, onnx_file, samples=samples, seed=seed, atol=atol, rtol=rtol, input_size=input_size,
                input_shape=input_shape, arch=arch, conv=conv, conv_kwargs=kwargs, trust_pickle=trust_pickle,
                model_class=model_class, model_args=model_args, report=report,
            )
        console.print(_parity_table(rep.parity))
        _print_accuracy(rep.accuracy)
        if report is not None:
            console.print(f"wrote {report}", highlight=False, soft_wrap=True, markup=False)
        out.emit(rep.to_dict())
    rep.parity.raise_if_failed()
