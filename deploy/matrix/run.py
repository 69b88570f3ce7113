"""`deploy matrix` as one plain function: one model in every format this machine can run, one row each.

The training form on PyTorch eager is the reference: every row's parity (seeded probe inputs),
accuracy on the data (with its Wilson interval and top-1 agreement) and speed (interleaved with
it, ``validators.latency``) is held to it. A row is ``passed``, ``failed its gate`` (parity beyond
its precision's tolerance, or top-1 accuracy more than ``max_drop`` points below the training
form's; an export whose own parity or graph check failed), ``failed`` (it could not be made or
run: the reason says why) or ``unavailable`` here (no GPU, not in this build).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from deploy.bench.torch_model import TorchBenchOptions, load_torch_runtime
from deploy.core.environment import host_device, versions
from deploy.core.errors import (
    BadInputError,
    GraphCheckError,
    ParityError,
    first_line,
)
from deploy.core.limits import check_finite, check_seed
from deploy.core.pathguard import guard_paths
from deploy.core.progress import SILENT, Progress
from deploy.core.shapes import parse_input_size
from deploy.data.datasets import DataSource, open_data
from deploy.data.preprocess import META_KEY, Recipe, parse_recipe
from deploy.load.source import ModelSource
from deploy.matrix.formats import FormatSpec, availability, select_formats
from deploy.matrix.report import MATRIX_FILES, MatrixReport, write_outputs
from deploy.matrix.rows import (
    FAILED,
    GATE,
    UNAVAILABLE,
    Context,
    MatrixRow,
    file_size,
    gate,
    open_row,
    row_accuracy,
    row_latency,
    row_parity,
    scores_on,
)
from deploy.pipeline.options import ExportOptions
from deploy.pipeline.steps import tolerance_from
from validators.accuracy import Scores


@dataclass
class MatrixOptions:
    """What `deploy matrix` is told (the CLI's defaults); export options pass through to the export."""

    model: Path
    data: Optional[str] = None
    calib: Optional[str] = None
    formats: Optional[list[str]] = None
    output_dir: Optional[Path] = None  # matrix.md/.json/.png and the artifacts (None: a temporary folder)
    batch: int = 1  # the timing batch
    eval_batch: int = 32
    duration: float = 3.0  # seconds of interleaved timing per row
    warmup: str = "0.5s"
    threads: Optional[int] = None
    max_drop: float = 1.0  # percentage points of top-1 accuracy below the training form's
    preprocess: Optional[str] = None
    limit: Optional[int] = None
    samples: int = 8
    seed: int = 0
    input_size: Optional[str] = None
    opset: Optional[int] = None
    exporter: str = "dynamo"
    atol: Optional[float] = None
    rtol: Optional[float] = None
    rewrite: bool = True
    simplify: bool = True
    strict: bool = True

    def check(self) -> None:
        check_seed(self.seed)
        check_finite("duration", self.duration, positive=True)
        check_finite("max_drop", self.max_drop)
        if self.max_drop < 0:
            raise BadInputError(f"`max_drop` {self.max_drop:g}: give 0 or more percentage points")
        for name in ("batch", "eval_batch", "samples"):
            if not 1 <= getattr(self, name) <= 4096:
                raise BadInputError(f"`{name}` {getattr(self, name)} must be in [1, 4096]")
        tolerance_from(self.atol, self.rtol)


def _recipe(loaded_meta: dict[str, Any], given: Optional[str], source: DataSource) -> Optional[Recipe]:
    recorded = loaded_meta.get(META_KEY)
    base = Recipe.from_dict(recorded) if isinstance(recorded, dict) else None
    recipe = parse_recipe(given, base=base) if given else base
    if recipe is None and source.arrays is None:
        raise BadInputError("the model records no preprocessing recipe: give `preprocess` (a preset such as "
                            "imagenet, or resize=256;crop=224;mean=…;std=…)")
    return recipe


def _export_options(opts: MatrixOptions, out_dir: Path) -> ExportOptions:
    return ExportOptions(source=ModelSource(opts.model), output=out_dir / f"{opts.model.stem}.onnx",
                         input_size=opts.input_size, opset=opts.opset, exporter=opts.exporter, atol=opts.atol,
                         rtol=opts.rtol, rewrite=opts.rewrite, simplify=opts.simplify, strict=opts.strict,
                         samples=min(opts.samples, 8), seed=opts.seed, compare_rewrites=False)


def _failure(spec: FormatSpec, exc: Exception) -> MatrixRow:
    gated = isinstance(exc, (ParityError, GraphCheckError))
    return MatrixRow(spec, GATE if gated else FAILED, first_line(exc))


def _row(spec: FormatSpec, ctx: Context, opts: MatrixOptions, data: Optional[tuple[DataSource, Optional[Recipe],
         Scores]]) -> MatrixRow:
    try:
        rt, artifact = open_row(spec, ctx)
    except Exception as exc:  # noqa: BLE001 - a format that cannot be made or opened is a row saying why
        return _failure(spec, exc)
    row = MatrixRow(spec, FAILED, artifact=str(artifact), size_bytes=file_size(artifact))
    try:
        tol = spec.tolerance()
        if tol is not None and spec.precision == "fp32":
            tol = tolerance_from(opts.atol, opts.rtol)
        row.parity = row_parity(spec, rt, ctx, tol)
        if data is not None:
            source, recipe, ref = data
            result = ref if spec.reference else scores_on(rt, source, recipe, opts.eval_batch)
            row_accuracy(row, result, ref, source, opts.seed)
        row.latency = row_latency(rt, ctx, opts.warmup, opts.duration)
    except Exception as exc:  # noqa: BLE001 - a backend refuses a format with its own exception types
        row.reason = first_line(exc)
        return row
    gate(row, opts.max_drop)
    return row


def _output_dir(opts: MatrixOptions, stack: list[Any]) -> Path:
    if opts.output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="convdeploy-matrix-")
        stack.append(tmp)
        return Path(tmp.name)
    out = Path(opts.output_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"output {out} is a file: give a directory for matrix.md, matrix.json and matrix.png")
    out.mkdir(parents=True, exist_ok=True)
    guard_paths(inputs={"the model": opts.model},
                outputs={f"`output_dir`/{n}": out / n for n in MATRIX_FILES}
                | {"the ONNX export": out / f"{opts.model.stem}.onnx"})
    return out


def run_matrix(opts: MatrixOptions, progress: Progress = SILENT) -> MatrixReport:
    """Every selected format of ``opts.model``, made, opened and held to the training form."""
    t0 = time.perf_counter()
    opts.check()
    specs = select_formats(opts.formats)
    keep: list[Any] = []
    out_dir = _output_dir(opts, keep)
    size = parse_input_size(opts.input_size)
    reference, loaded = load_torch_runtime(opts.model, TorchBenchOptions(fold=False, seed=opts.seed), size, opts.threads)
    shape = tuple(reference.sample_shape or ())
    rng = np.random.default_rng(opts.seed)
    probe = rng.standard_normal((opts.samples, *shape)).astype(np.float32)
    ctx = Context(opts.model, out_dir, reference, probe, np.asarray(reference.run(probe), dtype=np.float64),
                  rng.standard_normal((opts.batch, *shape)).astype(np.float32), _export_options(opts, out_dir),
                  max(opts.batch, opts.eval_batch, opts.samples), opts.threads, opts.seed, opts.calib)
    data = None
    if opts.data is not None:
        source = open_data(opts.data).subset(opts.limit, None, opts.seed)
        recipe = _recipe(dict(loaded.meta or {}), opts.preprocess, source)
        data = (source, recipe, scores_on(reference, source, recipe, opts.eval_batch))
    rows = []
    progress.task("formats", len(specs))
    for spec in specs:
        progress.update(text=f"{spec.title}")
        why = availability(spec, ctx.calib)
        rows.append(MatrixRow(spec, UNAVAILABLE, why) if why else _row(spec, ctx, opts, data))
        progress.update(advance=1)
    settings = {"batch": opts.batch, "eval_batch": opts.eval_batch, "duration_s": opts.duration, "warmup": opts.warmup,
                "threads": opts.threads, "max_drop_points": opts.max_drop, "samples": opts.samples, "seed": opts.seed,
                "calib": opts.calib, "formats": [s.key for s in specs], "exporter": opts.exporter,
                "opset": opts.opset, "input_size": opts.input_size, "atol": opts.atol, "rtol": opts.rtol}
    report = MatrixReport(str(opts.model), data[0].description if data else None, shape, rows, settings,
                          host_device(), versions())
    report.seconds = time.perf_counter() - t0
    if opts.output_dir is not None:
        report.outputs = write_outputs(report, out_dir)
    for tmp in keep:
        tmp.cleanup()
    return report
