"""`deploy export` as one plain function: load -> fold -> export -> simplify -> check -> parity -> write.

The CLI (`deploy export`), `deploy claims` and the Python API (``deploy.export``, on an
in-memory module) all call ``run_export``; each step is a plain function of
``deploy.pipeline.steps`` and ``StepLog`` only times and shows them. Nothing is written until
every gate has passed: the ONNX file and its report go to temporary names and are renamed
into place together at the end.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from deploy.core.errors import BadInputError
from deploy.core.limits import check_input_elements, check_samples, check_seed
from deploy.core.metrics import Tolerance
from deploy.core.pathguard import guard_paths
from deploy.core.progress import StepLog
from deploy.core.shapes import parse_dynamic, second_size
from deploy.core.threads import ThreadPlan, plan_threads
from deploy.fold.fold import FoldReport
from deploy.load.module import LoadedModel
from deploy.pipeline.options import ExportOptions, check_option_types, default_output, report_path_for
from deploy.pipeline.report import EngineCheck, RunReport
from deploy.pipeline.shapes import check_second_size, program_axes
from deploy.pipeline.steps import (
    export_recipe,
    fold_step,
    held_out_accuracy,
    load_step,
    onnx_metadata,
    parity_batches,
    parity_step,
    parity_threads,
    rewrite_comparison,
    tolerance_from,
    write_step,
    written_opset,
)
from exporters.onnx import OnnxExport, export_onnx_detailed, save_onnx
from exporters.opset import check_opset
from exporters.simplify import Simplified, simplified_structure, simplify_checked
from exporters.tensorrt.build import build_engine, require_engine_builder
from exporters.tensorrt.options import validate_build_options
from validators.fold_coverage import FoldCoverageReport, check_fold_coverage
from validators.graph import GraphReport, check_graph
from validators.parity import OutputParity, ParityReport, check_parity
from validators.runtimes.onnxruntime import OrtRuntime
from validators.runtimes.pytorch import torch_threads
from validators.runtimes.tensorrt import TensorRTRuntime
from validators.runtimes.tensorrt_env import metadata_path

#: the parity check's name for the exported graph in ONNX Runtime
ORT_NAME = "onnxruntime-cpu"


@dataclass
class ExportResult:
    """What an export wrote and measured: the paths, the typed report, the loaded model and its deploy form."""

    onnx_path: Path
    report_path: Path
    report: RunReport
    loaded: LoadedModel
    deploy_model: nn.Module
    record: dict[str, Any]  # the JSON document the report file holds

    @property
    def fold(self) -> FoldReport | None:
        """One row per folded layer with its float64 error (None with ``fold=False``)."""
        return self.report.fold

    @property
    def graph(self) -> GraphReport:
        assert self.report.graph is not None  # an export always checks its graph
        return self.report.graph

    @property
    def fold_coverage(self) -> FoldCoverageReport:
        assert self.report.fold_coverage is not None  # an export always checks its fold coverage
        return self.report.fold_coverage

    @property
    def parity(self) -> ParityReport:
        return self.report.parity

    def parity_by_output(self) -> dict[str, dict[str, OutputParity]]:
        """``{candidate: {output name: metrics}}``: every output of every runtime compared."""
        return {c.name: {o.name: o for o in c.outputs} for c in self.parity.candidates}

    @property
    def seconds(self) -> dict[str, float]:
        """Wall time of each pipeline step."""
        return dict(self.report.seconds)


def _output_paths(opts: ExportOptions) -> tuple[Path, Path]:
    """(ONNX, report) paths, checked before any work: writable, none of them an input or another output."""
    checkpoint = opts.source.checkpoint
    if opts.output is None and checkpoint is None:
        raise BadInputError("give the `output` path of the ONNX file to write")
    output = Path(opts.output) if opts.output else default_output(Path(str(checkpoint)))
    if output.suffix != ".onnx" or output.name == ".onnx":
        raise BadInputError(f"output {output} must end in .onnx")
    report_path = Path(opts.report) if opts.report else report_path_for(output)
    engine = Path(opts.engine) if opts.engine is not None else None
    guard_paths(
        inputs=opts.source.input_paths(),
        outputs={"`output`": output, "the external data of `output`": output.with_name(output.name + ".data"),
                 "`report`": report_path, "`engine`": engine,
                 "the engine metadata of `engine`": metadata_path(engine) if engine is not None else None,
                 "`timing_cache`": opts.timing_cache},
    )
    if opts.engine is not None:
        if parse_dynamic(opts.dynamic, opts.batch)[1]:
            raise BadInputError("a TensorRT engine is built with a profile over the batch axis only: "
                                "export it with `dynamic` batch (fixed H/W)")
        require_engine_builder(opts.fp16)  # exit 5 before any work when TensorRT, the GPU or polygraphy is missing
    return output, report_path


def build_checked_engine(proto: Any, opts: ExportOptions, input_shape: tuple[int, ...], ort: OrtRuntime,
                         output: Path) -> EngineCheck:
    """Build the TensorRT engine from ``proto`` and check it against ONNX Runtime fp32.

    The ONNX goes to a temporary file beside the output (the final one is written only
    after every gate). A failed parity check removes the engine and its JSON: a failed run
    leaves nothing behind. Tolerance: fp32 as for ONNX, fp16 scaled to fp16.
    """
    assert opts.engine is not None
    with tempfile.TemporaryDirectory(prefix=".convdeploy-", dir=output.parent) as tmp:
        onnx_tmp = save_onnx(proto, Path(tmp) / output.name)
        build_opts = validate_build_options(
            onnx_tmp, opts.engine, fp16=opts.fp16, min_batch=opts.min_batch, opt_batch=opts.opt_batch,
            max_batch=opts.max_batch, workspace_gib=opts.workspace, timing_cache=opts.timing_cache,
        )
        meta = build_engine(build_opts)
    try:
        engine_rt = TensorRTRuntime(opts.engine)
        batches = tuple(sorted({engine_rt.profile.min[0], engine_rt.profile.max[0]}))
        tol = Tolerance.for_precision("fp16" if opts.fp16 else "fp32")
        parity = check_parity(ort, [engine_rt], input_shape, opts.samples, batches, opts.seed, tol)
        parity.raise_if_failed()
    except BaseException:
        Path(opts.engine).unlink(missing_ok=True)
        metadata_path(opts.engine).unlink(missing_ok=True)
        raise
    return EngineCheck(Path(opts.engine), meta, parity)


def _options_record(opts: ExportOptions, opset: int, input_shape: tuple[int, ...], fixed_batch: int | None,
                    dynamic_hw: bool, opset_reason: str = "") -> dict[str, Any]:
    axes = (["batch"] if fixed_batch is None else []) + (["height", "width"] if dynamic_hw else [])
    return {"fold": opts.fold, "rewrite": opts.rewrite and opts.fold, "exporter": opts.exporter, "opset": opset,
            "opset_reason": opset_reason,
            "batch": str(fixed_batch or "dynamic"), "input_shape": list(input_shape), "dynamic_axes": axes,
            "parity_input_shapes": [list(input_shape)] + ([[input_shape[0], *second_size(input_shape)]]
                                                          if dynamic_hw else []),
            "simplify": opts.simplify and opts.fold, "strict": opts.strict, "strict_fold": opts.strict_fold}


def run_export(opts: ExportOptions, log: StepLog | None = None) -> ExportResult:
    """The whole `deploy export`: every gate passes, then MODEL.onnx and its report appear together.

    PyTorch runs on the CPUs other processes leave free (``deploy.core.threads``), put back after."""
    log = log or StepLog()
    check_option_types(opts)
    output, report_path = _output_paths(opts)
    check_samples(opts.samples)
    check_seed(opts.seed)
    check_opset(opts.exporter, opts.opset)
    tol = tolerance_from(opts.atol, opts.rtol)
    plan = plan_threads()
    with torch_threads(plan.free):
        return _run(opts, log, tol, plan, output, report_path)


def _run(opts: ExportOptions, log: StepLog, tol: Tolerance, plan: ThreadPlan, output: Path,
         report_path: Path) -> ExportResult:
    with log.step("load"):
        loaded, input_shape, fixed_batch, dynamic_hw = _load(opts)
    with log.step("fold"):
        deploy_model, fold_report = (fold_step(loaded, input_shape, opts.seed, rewrite=opts.rewrite) if opts.fold
                                     else (loaded.model, None))

    recipe = export_recipe(loaded, opts.preprocess)
    metadata = onnx_metadata(loaded, opts.fold, input_shape, fold_report, opts.rewrite, recipe)
    ort_threads = parity_threads(plan, opts.fold)[0]

    def export(model: nn.Module) -> OnnxExport:
        return export_onnx_detailed(model, input_shape, opset=opts.opset, exporter=opts.exporter,
                                    dynamic_batch=fixed_batch is None, dynamic_hw=dynamic_hw,
                                    batch_size=fixed_batch or 1, metadata=metadata)

    def simplify(model: onnx.ModelProto) -> Simplified | None:
        # without folding the graph is kept as exported: onnxsim would constant-fold the
        # kernel-computing subgraphs, i.e. fold behind the user's back.
        if opts.simplify and opts.fold:
            return simplify_checked(model, input_shape, tol=tol, seed=opts.seed, threads=ort_threads, name=ORT_NAME)
        return None

    with log.step("export"):
        exported = export(deploy_model)
    with log.step("simplify"):
        simplified = simplify(exported.model)
    proto = simplified.model if simplified is not None else exported.model
    rewrites = None
    if fold_report is not None and fold_report.rewrites and opts.compare_rewrites:
        with log.step("rewrite diff"):
            # the graph without the rewrites is only counted: onnxsim as the shipped graph had it, unchecked
            simplify_too = simplified is not None and simplified.result.applied
            rewrites = rewrite_comparison(loaded, input_shape, proto, lambda m: _comparison_graph(export(m), simplify_too))
    with log.step("graph checks"):
        graph, coverage = (check_graph(proto, input_shape),
                           check_fold_coverage(proto, fold_report.kept_pairs if fold_report is not None else ()))
    with log.step("parity"):
        ort = (simplified.session if simplified is not None and simplified.session is not None
               else OrtRuntime(proto, threads=ort_threads, name=ORT_NAME))
        parity, runtimes = parity_step(loaded, deploy_model if opts.fold else None, ort, proto, input_shape,
                                       parity_batches(fixed_batch), opts.samples, opts.seed, tol, fold_report,
                                       extra_sizes=[second_size(input_shape)] if dynamic_hw else [], plan=plan)
        accuracy = held_out_accuracy(loaded, runtimes, opts.data, recipe, plan)
    report = RunReport("convdeploy export", {"path": opts.source.label, **loaded.describe()},
                       parity, opts.seed, options=_options_record(opts, written_opset(proto), input_shape, fixed_batch,
                                                                  dynamic_hw, exported.opset_reason),
                       fold=fold_report, export=exported, simplify=simplified.result if simplified else None,
                       rewrites=rewrites, graph=graph, fold_coverage=coverage, accuracy=accuracy, seconds=log.seconds,
                       threads=plan)
    _gate(report, opts)
    if opts.engine is not None:
        with log.step("tensorrt"):
            report.engine = build_checked_engine(proto, opts, input_shape, ort, output)
    with log.step("write"):
        record = _write(proto, output, report_path, report, opts)
    return ExportResult(output, report_path, report, loaded, deploy_model, record)


def _comparison_graph(exported: OnnxExport, simplify: bool) -> onnx.ModelProto:
    """The graph the rewrite diff counts: ``exported``, through onnxsim when the shipped graph went through it."""
    return simplified_structure(exported.model) if simplify else exported.model


def _load(opts: ExportOptions) -> tuple[LoadedModel, tuple[int, ...], int | None, bool]:
    """The model, its input shape (C, H, W), the fixed batch (None: dynamic) and whether H/W are
    dynamic; the largest input parity will feed is checked against the element bound first."""
    loaded, input_shape = load_step(opts.source, input_size=opts.input_size, input_shape=opts.input_shape)
    fixed_batch, dynamic_hw = program_axes(loaded, opts.batch, opts.dynamic)
    check_input_elements((fixed_batch or max(parity_batches(None)), *input_shape))
    if dynamic_hw:
        check_second_size(loaded.model, input_shape, fixed_batch or 1)
    return loaded, input_shape, fixed_batch, dynamic_hw


def _write(proto: onnx.ModelProto, output: Path, report_path: Path, report: RunReport,
           opts: ExportOptions) -> dict[str, Any]:
    """Write the ONNX file and its report together (returns the report's record); an engine built for them
    goes if that fails."""
    try:
        return write_step(proto, output, report_path, report)
    except BaseException:  # no engine without the ONNX file and report it was checked against
        if report.engine is not None and opts.engine is not None:
            Path(opts.engine).unlink(missing_ok=True)
            metadata_path(opts.engine).unlink(missing_ok=True)
        raise


def _gate(report: RunReport, opts: ExportOptions) -> None:
    """Parity first (exit 3), then the graph check (exit 4 unless not ``strict``), then fold coverage
    (exit 4 with ``strict_fold``)."""
    report.parity.raise_if_failed()
    if opts.strict and report.graph is not None:
        report.graph.raise_if_failed()
    if opts.strict_fold and report.fold_coverage is not None:
        report.fold_coverage.raise_if_failed()
