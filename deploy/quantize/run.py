"""`deploy quantize` as one plain function: a folded fp32 ONNX model in, a gated INT8 Q/DQ ONNX model out.

The flow: the calibration and evaluation images are opened with the loaders and the preprocessing of
`deploy eval` and checked to be disjoint; the fp32 model must be folded (fold coverage clean: no
BatchNormalization after a convolution, no run-time weights, no parallel branches left — a fold
after quantization is impossible, so it comes first); ONNX Runtime's pre-processing prepares it,
calibration fits the activation ranges once (``calibrate``), and ``quantize`` writes the Q/DQ
model of the target's recipe. The gate (``deploy.quantize.gate``) then scores it against the fp32
model on the evaluation images. When it fails and ``auto_keep`` is on, the quantized nodes are
ranked by SQNR (``deploy.quantize.sensitivity``) and kept in float one at a time, worst first,
re-quantizing from the same ranges, until the gate passes or ``max_kept`` nodes are float. A
failed gate writes nothing and raises ``AccuracyGateError`` naming the most sensitive layers; a
passed one writes the INT8 file and its report, both or neither.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from deploy.core.atomic import Transaction, json_bytes, output_lock
from deploy.core.errors import AccuracyGateError, BadInputError
from deploy.core.pathguard import guard_paths
from deploy.core.progress import SILENT, Progress
from deploy.data.datasets import DataSource, batches, open_data
from deploy.data.preprocess import METADATA_KEY as RECIPE_KEY
from deploy.data.preprocess import Recipe
from deploy.evaluation.run import resolve_recipe
from deploy.pipeline.options import report_path_for
from deploy.quantize.calibrate import calibrate, calibration_warnings, check_disjoint
from deploy.quantize.gate import GateResult, judge, output_sqnr, predict, top1_of
from deploy.quantize.qdq import preprocess, quantize
from deploy.quantize.recipes import QuantRecipe, method_of, recipe_for
from deploy.quantize.report import METADATA_KEY, DataRecord, KeepStep, QuantizeReport
from deploy.quantize.sensitivity import NodeSensitivity, rank_nodes
from exporters.onnx import stage_onnx
from validators.accuracy import Scores
from validators.fold_coverage import check_fold_coverage
from validators.onnx_file import load_onnx
from validators.qdq import QDQ_OPS, node_precisions

#: calibration images the sensitivity ranking runs on
RANK_IMAGES = 64
#: the most nodes `max_kept` may keep in float
MAX_KEPT_LIMIT = 64


@dataclass(frozen=True)
class QuantizeOptions:
    """How `deploy quantize` runs (the CLI's defaults)."""

    calib: str
    eval: str
    target: str = "tensorrt"
    method: str = "minmax"
    max_drop: float = 1.0  # percentage points of top-1 (module docstring of deploy.quantize.gate)
    keep_float: tuple[str, ...] = ()
    auto_keep: bool = False
    max_kept: int = 8
    preprocess: str | None = None
    classes: Path | None = None
    batch: int = 32
    calib_limit: int | None = None
    eval_limit: int | None = None
    seed: int = 0
    threads: int | None = None
    allow_unfolded: bool = False
    report: Path | None = None


def check_options(opts: QuantizeOptions) -> QuantRecipe:
    """The target's recipe; BadInputError for an option out of its range (before any work)."""
    recipe = recipe_for(opts.target)
    method_of(opts.method)
    if not (isinstance(opts.max_drop, (int, float)) and math.isfinite(opts.max_drop) and 0 <= opts.max_drop <= 100):
        raise BadInputError(f"`max_drop` must be a number of points in [0, 100], got {opts.max_drop!r}")
    if isinstance(opts.max_kept, bool) or not isinstance(opts.max_kept, int) or not 1 <= opts.max_kept <= MAX_KEPT_LIMIT:
        raise BadInputError(f"`max_kept` must be an integer in [1, {MAX_KEPT_LIMIT}], got {opts.max_kept!r}")
    if isinstance(opts.batch, bool) or not isinstance(opts.batch, int) or not 1 <= opts.batch <= 4096:
        raise BadInputError(f"`batch` must be an integer in [1, 4096], got {opts.batch!r}")
    return recipe


def int8_path_for(onnx_path: Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (what `deploy export --int8` writes)."""
    return onnx_path.with_name(onnx_path.name[: -len(".onnx")] + ".int8.onnx")


def _data_path(spec: str) -> Path | None:
    return None if spec.startswith("digits") else Path(spec)


def _paths(model: Path, output: Path, opts: QuantizeOptions) -> Path:
    """The report path; every path checked before any work (docs/architecture.md "Writes")."""
    if output.suffix != ".onnx" or output.name == ".onnx":
        raise BadInputError(f"output {output} must end in .onnx")
    report = Path(opts.report) if opts.report else report_path_for(output)
    guard_paths(inputs={"the fp32 model": model, "the `calib` data": _data_path(opts.calib),
                        "the `eval` data": _data_path(opts.eval), "the classes file": opts.classes},
                outputs={"`output`": output, "the external data of `output`": output.with_name(output.name + ".data"),
                         "`report`": report})
    return report


def _read_model(model: Path, allow_unfolded: bool) -> tuple[onnx.ModelProto, Recipe | None]:
    """The fp32 model's graph (weights not loaded) and the recipe it records; refused when it is already
    quantized or not folded."""
    proto = load_onnx(model)
    if any(n.op_type in QDQ_OPS or n.op_type.startswith("QLinear") for n in proto.graph.node):
        raise BadInputError(f"{model} is already quantized: give the fp32 ONNX file that `deploy export` wrote")
    if not allow_unfolded:
        findings = check_fold_coverage(proto).findings
        if findings:
            raise BadInputError(f"{model} is not folded ({findings[0].kind} at {', '.join(findings[0].nodes[:3])}): "
                                "quantize the folded model that `deploy export` writes (`allow_unfolded` to measure what "
                                "folding first buys)")
    meta = {p.key: p.value for p in proto.metadata_props}
    return proto, Recipe.from_json(meta[RECIPE_KEY]) if RECIPE_KEY in meta else None


def _open_sources(opts: QuantizeOptions, proto: onnx.ModelProto,
                  recorded: Recipe | None) -> tuple[DataSource, DataSource, Recipe | None]:
    calib = open_data(opts.calib, opts.classes).subset(opts.calib_limit, seed=opts.seed)
    held_out = open_data(opts.eval, opts.classes).subset(opts.eval_limit, seed=opts.seed)
    for name, source in (("calib", calib), ("eval", held_out)):
        if not source.items:
            raise BadInputError(f"the `{name}` data holds no images")
    check_disjoint(calib, held_out)
    recipe = resolve_recipe(recorded, opts.preprocess, calib if calib.arrays is None else held_out)
    for name, source in (("calib", calib), ("eval", held_out)):
        _check_shape(proto, source, recipe, name)
    return calib, held_out, recipe


def _check_shape(proto: onnx.ModelProto, source: DataSource, recipe: Recipe | None, name: str) -> None:
    """BadInputError when the first image of ``source`` does not have the shape the model's input takes."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in proto.graph.input[0].type.tensor_type.shape.dim]
    first = next(batches(source.subset(limit=1), recipe, 1)).x
    if len(dims) != first.ndim or any(d is not None and d != n for d, n in zip(dims[1:], first.shape[1:])):
        want = "x".join("?" if d is None else str(d) for d in dims[1:])
        raise BadInputError(f"the `{name}` images become {'x'.join(map(str, first.shape[1:]))} inputs but the model takes "
                            f"{want}: give images of the model's kind or a `preprocess` recipe that makes them so")


def _rank_inputs(calib: DataSource, recipe: Recipe | None, batch: int) -> list[np.ndarray]:
    return [b.x for b in batches(calib.subset(limit=RANK_IMAGES), recipe, batch)]


def _with_metadata(proto: onnx.ModelProto, fp32: onnx.ModelProto, record: dict[str, object]) -> onnx.ModelProto:
    """``proto`` with the fp32 model's metadata (the preprocessing recipe among it) and the quantization record."""
    del proto.metadata_props[:]
    for prop in fp32.metadata_props:
        if prop.key != METADATA_KEY:
            proto.metadata_props.add(key=prop.key, value=prop.value)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(record, sort_keys=True))
    return proto


@dataclass
class _Work:
    """What every quantization of one run shares: files, data, the fp32 predictions."""

    prepared: Path
    cache: Path
    scratch: Path
    recipe: QuantRecipe
    preprocess: Recipe | None
    calib: DataSource
    held_out: DataSource
    opts: QuantizeOptions
    fp32: Scores  # the fp32 model's predictions on the evaluation images
    progress: Progress

    def attempt(self, keep: tuple[str, ...]) -> tuple[onnx.ModelProto, GateResult]:
        proto = quantize(self.prepared, self.cache, self.recipe, self.opts.method, keep_float=keep)
        onnx.save(proto, str(self.scratch))
        scores = predict(self.scratch, self.held_out, self.preprocess, batch=self.opts.batch, threads=self.opts.threads,
                         progress=self.progress)
        return proto, judge(self.fp32, scores, self.held_out, self.opts.max_drop, self.opts.seed)


def _keep_loop(work: _Work) -> tuple[onnx.ModelProto, list[KeepStep], list[NodeSensitivity]]:
    """Quantize, judge and, with ``auto_keep``, keep the worst node in float until the gate passes (module docstring)."""
    opts = work.opts
    kept = tuple(opts.keep_float)
    proto, gate = work.attempt(kept)
    steps = [KeepStep(None, None, None, kept, gate)]
    ranking = rank_nodes(proto, work.prepared, _rank_inputs(work.calib, work.preprocess, opts.batch))
    candidates = [s for s in ranking if s.node not in kept]
    while not gate.passed and opts.auto_keep and candidates and len(kept) - len(opts.keep_float) < opts.max_kept:
        worst = candidates.pop(0)
        kept = (*kept, worst.node)
        work.progress.log(f"keeping {worst.text()} in float")
        proto, gate = work.attempt(kept)
        steps.append(KeepStep(worst.node, worst.module, worst.sqnr_db, kept, gate))
    return proto, steps, ranking


class QuantizeGateError(AccuracyGateError):
    """The INT8 model failed its accuracy gate (exit 3); ``report`` holds what was measured. Nothing was written."""

    def __init__(self, message: str, report: QuantizeReport) -> None:
        super().__init__(message)
        self.report = report


def _gate_error(report: QuantizeReport) -> QuantizeGateError:
    worst = "; ".join(s.text() for s in report.sensitive[:3]) or "none ranked"
    tried = (f" after keeping {len(report.kept_float)} node(s) in float" if report.kept_float else
             " (`auto_keep` keeps the most sensitive nodes in float)")
    return QuantizeGateError(f"INT8 refused: {report.final.gate.text()}{tried}; most sensitive layers: {worst}", report)


def _write(proto: onnx.ModelProto, output: Path, report_path: Path, report: QuantizeReport) -> None:
    with output_lock(output), Transaction() as txn:
        sha = stage_onnx(txn, proto, output)
        report.outputs = {"onnx": {"path": str(output), "sha256": sha}, "report": {"path": str(report_path)}}
        txn.stage_bytes(report_path, json_bytes(report.to_dict()))
        txn.commit()


def run_quantize(model: str | Path, output: str | Path, opts: QuantizeOptions, progress: Progress = SILENT) -> QuantizeReport:
    """Quantize ``model`` into ``output`` behind the accuracy gate (module docstring)."""
    model, output = Path(model), Path(output)
    recipe = check_options(opts)
    report_path = _paths(model, output, opts)
    fp32_graph, recorded = _read_model(model, opts.allow_unfolded)
    calib, held_out, preprocess_recipe = _open_sources(opts, fp32_graph, recorded)
    warnings = calibration_warnings(calib)
    for text in warnings:
        progress.log(f"warning: {text}")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convdeploy-int8.") as tmp:
        prepared = preprocess(model, Path(tmp) / "prepared.onnx")
        cache = calibrate(prepared, calib, preprocess_recipe, recipe, opts.method, Path(tmp) / "ranges.cache",
                          batch=opts.batch, progress=progress)
        seconds["calibrate"] = time.perf_counter() - start
        fp32 = predict(model, held_out, preprocess_recipe, batch=opts.batch, threads=opts.threads, progress=progress)
        work = _Work(prepared, cache, Path(tmp) / "int8.onnx", recipe, preprocess_recipe, calib, held_out, opts, fp32,
                     progress)
        proto, steps, ranking = _keep_loop(work)
        seconds["quantize_and_gate"] = time.perf_counter() - start - seconds["calibrate"]
        sqnr = output_sqnr(model, work.scratch, held_out, preprocess_recipe, batch=opts.batch, threads=opts.threads)
        int8_bytes = work.scratch.stat().st_size
    precisions = node_precisions(proto)
    report = QuantizeReport(
        str(model), opts.target, opts.method, DataRecord(calib.description, len(calib.items)),
        DataRecord(held_out.description, len(held_out.items)),
        preprocess_recipe.to_dict() if preprocess_recipe else None,
        top1_of(fp32, held_out), steps, ranking[:10], sqnr,
        sum(p.precision == "int8" for p in precisions), sum(p.precision == "float" for p in precisions),
        {"fp32": model.stat().st_size + _external_bytes(model), "int8": int8_bytes}, seconds, warnings)
    if not report.passed:
        raise _gate_error(report)
    _write(_with_metadata(proto, fp32_graph, report.metadata()), output, report_path, report)
    return report


def _external_bytes(model: Path) -> int:
    data = model.with_name(model.name + ".data")
    return data.stat().st_size if data.exists() else 0


def quantize_ungated(model: str | Path, calib: str, output: str | Path, target: str = "tensorrt",
                     method: str = "minmax") -> Path:
    """The INT8 file of ``model`` calibrated on ``calib`` for ``target``, written without a gate: for callers
    that gate it themselves (`deploy matrix` scores every format on the same images). Returns ``output``."""
    model, output = Path(model), Path(output)
    recipe = check_options(QuantizeOptions(calib=calib, eval=calib, target=target, method=method))
    fp32_graph, recorded = _read_model(model, allow_unfolded=False)
    source = open_data(calib)
    preprocess_recipe = resolve_recipe(recorded, None, source)
    _check_shape(fp32_graph, source, preprocess_recipe, "calib")
    with tempfile.TemporaryDirectory(prefix="convdeploy-int8.") as tmp:
        prepared = preprocess(model, Path(tmp) / "prepared.onnx")
        cache = calibrate(prepared, source, preprocess_recipe, recipe, method, Path(tmp) / "ranges.cache")
        proto = quantize(prepared, cache, recipe, method)
    record = {"target": target, "method": method, "calib": source.description, "calib_images": len(source.items),
              "kept_float": [], "gated": False}
    with output_lock(output), Transaction() as txn:
        stage_onnx(txn, _with_metadata(proto, fp32_graph, record), output)
        txn.commit()
    return output
