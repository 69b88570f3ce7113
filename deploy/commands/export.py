"""`deploy export`: load, fold, export, simplify, check, prove parity; write OUT.onnx and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deploy.commands.common import configure_output, console, detail, machine_output, state, warn
from deploy.commands.options import (
    ATOL,
    DATA,
    DYNAMIC,
    ENGINE,
    EXPORT_BATCH,
    EXPORTER,
    FOLD,
    FP16,
    INPUT_SHAPE,
    INPUT_SIZE,
    MAX_BATCH,
    MIN_BATCH,
    OPSET,
    OPT_BATCH,
    PREPROCESS,
    REWRITE,
    REWRITE_DIFF,
    RTOL,
    SAMPLES,
    SEED,
    SIMPLIFY,
    STRICT,
    STRICT_FOLD,
    TIMING_CACHE,
    WORKSPACE,
)
from deploy.commands.printing import RichProgress, parity_table, print_accuracy, print_fold_coverage, print_graph
from deploy.commands.quantize import (
    CALIB,
    EVAL,
    KEEP_FLOAT,
    KEEP_FLOAT_MAX,
    MAX_DROP,
    METHOD,
    TARGET,
    print_quantize,
    quantize_options,
)
from deploy.commands.source_options import (
    ARCH,
    CONV,
    CONV_OPT,
    MODEL,
    MODEL_ARGS,
    MODEL_CLASS,
    RATIO,
    TRUST_PICKLE,
    model_source,
)
from deploy.core.errors import BadInputError
from deploy.core.progress import StepLog
from deploy.pipeline.export import ExportResult, run_export
from deploy.pipeline.options import ExportOptions
from deploy.quantize.run import QuantizeGateError, QuantizeOptions, check_options, int8_path_for, run_quantize


def export(
    model: Path = MODEL,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="ONNX file to write (default: MODEL with .onnx)."),
    report: Optional[Path] = typer.Option(None, "--json-file", "--report", metavar="PATH", help="The report JSON, "
                                          "written with OUT.onnx, both or neither (default: OUT.report.json)."),
    as_json: bool = typer.Option(False, "--json", help="Also print the report JSON on stdout; the human text goes "
                                 "to stderr."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Say where the time went: the CPUs the run found "
                                 "free, the parity step split into reference, candidates and comparison (as "
                                 "`deploy -v export`)."),
    fold: bool = FOLD,
    rewrite: bool = REWRITE,
    rewrite_diff: bool = REWRITE_DIFF,
    opset: Optional[int] = OPSET,
    exporter: str = EXPORTER,
    simplify: bool = SIMPLIFY,
    strict: bool = STRICT,
    strict_fold: bool = STRICT_FOLD,
    preprocess: Optional[str] = PREPROCESS,
    data: Optional[str] = DATA,
    batch: Optional[str] = EXPORT_BATCH,
    input_size: Optional[str] = INPUT_SIZE,
    input_shape: Optional[str] = INPUT_SHAPE,
    dynamic: Optional[str] = DYNAMIC,
    atol: Optional[float] = ATOL,
    rtol: Optional[float] = RTOL,
    samples: int = SAMPLES,
    seed: int = SEED,
    arch: Optional[str] = ARCH,
    conv: Optional[str] = CONV,
    conv_opt: Optional[list[str]] = CONV_OPT,
    ratio: Optional[float] = RATIO,
    model_class: Optional[str] = MODEL_CLASS,
    model_args: Optional[str] = MODEL_ARGS,
    trust_pickle: bool = TRUST_PICKLE,
    engine: Optional[Path] = ENGINE,
    fp16: bool = FP16,
    min_batch: Optional[int] = MIN_BATCH,
    opt_batch: Optional[int] = OPT_BATCH,
    max_batch: Optional[int] = MAX_BATCH,
    workspace: Optional[float] = WORKSPACE,
    timing_cache: Optional[Path] = TIMING_CACHE,
    int8: bool = typer.Option(False, "--int8", rich_help_panel="INT8", help="Also write OUT.int8.onnx: explicit "
                              "Q/DQ calibrated on --calib, written only if its top-1 on --eval (default: --data) is "
                              "within --max-drop of the fp32 file's (as `deploy quantize`)."),
    calib: Optional[str] = CALIB,
    eval_data: Optional[str] = EVAL,
    target: str = TARGET,
    method: str = METHOD,
    max_drop: float = MAX_DROP,
    keep_float: Optional[str] = KEEP_FLOAT,
    keep_float_max: int = KEEP_FLOAT_MAX,
) -> None:
    """Fold MODEL.pt, export ONNX, simplify, check the graph, prove parity; write OUT.onnx + report.

    OUT.onnx and OUT.report.json are written together at the end, or neither is.

    Every output of the model is compared by name. Exit codes: 2 bad input, 3 parity failed (names the
    output and the first diverging layer) or, with --int8, the INT8 gate failed (OUT.onnx is written, OUT.int8.onnx
    is not), 4 graph check failed (or, with --strict-fold, fold coverage).
    """
    if verbose:
        if state["quiet"]:
            raise typer.BadParameter("give -v/--verbose or -q/--quiet, not both")
        configure_output(debug=bool(state["debug"]), verbose=True, quiet=False)
    if not int8 and (calib or eval_data):
        raise BadInputError("--calib and --eval apply to --int8: add --int8")
    int8_opts = _int8_options(int8, calib, eval_data or data, target, method, max_drop, keep_float, keep_float_max,
                              preprocess)
    source = model_source(model, arch=arch, conv=conv, conv_opt=conv_opt, ratio=ratio, model_class=model_class,
                          model_args=model_args, trust_pickle=trust_pickle)
    opts = ExportOptions(
        source=source, output=output, report=report, fold=fold, rewrite=rewrite, compare_rewrites=rewrite_diff,
        opset=opset, batch=batch, input_size=input_size, input_shape=input_shape, dynamic=dynamic,
        exporter=exporter, simplify=simplify, atol=atol, rtol=rtol, samples=samples, seed=seed, strict=strict,
        strict_fold=strict_fold, data=data, preprocess=preprocess, engine=engine, fp16=fp16, min_batch=min_batch,
        opt_batch=opt_batch, max_batch=max_batch, workspace=workspace, timing_cache=timing_cache,
    )
    with machine_output(as_json, None) as out:
        console.print(f"[bold]deploy export[/] {model} ({'fold' if fold else 'no fold'}, {exporter} exporter)")
        with RichProgress(steps=True) as progress:
            result = run_export(opts, StepLog(progress))
        _print_export(result)
        out.emit(result.record)  # the record the pair holds
        if int8_opts is not None:
            _export_int8(result, int8_opts)


def _int8_options(int8: bool, calib: Optional[str], eval_data: Optional[str], target: str, method: str, max_drop: float,
                  keep_float: Optional[str], keep_float_max: int, preprocess: Optional[str]) -> Optional[QuantizeOptions]:
    """The INT8 step's options, checked before the export starts; None without --int8."""
    if not int8:
        return None
    opts = quantize_options(calib, eval_data, keep_float, target=target, method=method, max_drop=max_drop,
                            max_kept=keep_float_max, preprocess=preprocess)
    check_options(opts)
    return opts


def _export_int8(result: ExportResult, opts: QuantizeOptions) -> None:
    """Quantize the ONNX file just written (``deploy quantize``) into OUT.int8.onnx."""
    target = int8_path_for(result.onnx_path)
    console.print(f"[bold]INT8[/] {result.onnx_path} -> {target} (--target {opts.target}, --method {opts.method})")
    try:
        with RichProgress(transient=True) as progress:
            report = run_quantize(result.onnx_path, target, opts, progress=progress)
    except QuantizeGateError as exc:
        print_quantize(exc.report)
        raise
    print_quantize(report)
    console.print(f"wrote {target} and {report.outputs['report']['path']}")


_KEPT_SHOWN = 6  # the fold's kept layers printed; the report holds them all


def _print_export(result: ExportResult) -> None:
    rep = result.report
    if rep.fold is not None:
        rewrites = len(rep.fold.rewrites)
        whole = f" (whole model {rep.fold.end_to_end[1]:.2e})" if rep.fold.end_to_end else ""
        console.print(f"fold: {len(rep.fold.rows) - rewrites} layers folded, {rewrites} rewritten, worst "
                      f"{rep.fold.precision} rel error {rep.fold.worst_rel_error:.2e}{whole}")
        if rep.fold.precision_reason:
            detail(f"  fold precision: {rep.fold.precision_reason}")
        for line in rep.fold.kept[:_KEPT_SHOWN]:
            console.print(f"  kept: {line}", markup=False, highlight=False, soft_wrap=True)
        if len(rep.fold.kept) > _KEPT_SHOWN:
            console.print(f"  kept: {len(rep.fold.kept) - _KEPT_SHOWN} more in the report (fold.kept)")
    if rep.rewrites is not None:
        console.print(f"rewrites: {rep.rewrites.summary()}")
    if rep.simplify is not None:
        if rep.simplify.applied:
            console.print(rep.simplify.summary())
        else:
            warn(f"onnxsim NOT applied, the unsimplified graph is kept: {rep.simplify.reason}")
    if rep.export is not None:
        detail(f"  opset {rep.export.opset}: {rep.export.opset_reason}")
        for line in rep.export.captured_warnings + rep.export.captured_stdout.splitlines():
            detail(f"  exporter: {line}")
    print_graph(result.graph, result.fold_coverage)
    print_fold_coverage(result.fold_coverage, bool(rep.options.get("strict_fold")))
    console.print(parity_table(result.parity))
    print_accuracy(rep.accuracy)
    if rep.engine is not None:
        console.print(rep.engine.summary())
        for note in rep.engine.notes:
            warn(note)
    _print_times(result)
    console.print(f"wrote {result.onnx_path} and {result.report_path} (total {sum(rep.seconds.values()):.1f} s)")


def _print_times(result: ExportResult) -> None:
    """``-v``: each step's time, the CPUs the run found free, and the parity step split."""
    rep = result.report
    detail("time: " + ", ".join(f"{step} {seconds:.2f} s" for step, seconds in rep.seconds.items()))
    if rep.threads is not None:
        detail(f"  threads: {rep.threads.summary()}")
    if rep.parity.seconds is not None:
        detail(f"  parity: {rep.parity.seconds.summary()}")
    if rep.accuracy is not None:
        detail(f"  held-out accuracy: {rep.accuracy.seconds:.2f} s of the parity step")
