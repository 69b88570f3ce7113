"""One row of `deploy matrix`: its artifact made and opened, then held to the training form.

``open_row`` makes what a format needs (the fp32 ONNX export through ``deploy.pipeline``, shared by
every row that starts from it; an engine; the INT8 model from the quantizer) and opens its runtime
(``deploy.bench``). ``measure_row`` holds it to the training form: parity on seeded inputs, accuracy
on the data with its Wilson interval and top-1 agreement (``validators.accuracy``), and speed
interleaved with PyTorch eager (``validators.latency``): median, p99, images/s and the ratio with its
95 % interval. ``gate`` turns that into passed / failed its gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from deploy.bench.runtime import open_runtime
from deploy.bench.torch_model import TorchBenchOptions, load_torch_runtime
from deploy.core.errors import BadInputError
from deploy.core.metrics import Tolerance, compare, decisive_top1
from deploy.data.datasets import DataSource, batches
from deploy.data.preprocess import Recipe
from deploy.matrix.formats import FormatSpec
from deploy.pipeline.export import run_export
from deploy.pipeline.options import ExportOptions
from deploy.quantize.run import quantize_ungated
from exporters.tensorrt.build import build_engine
from exporters.tensorrt.options import validate_build_options
from validators.accuracy import Interval, Scores, accuracy_report, compare_predictions, score
from validators.latency import interleaved
from validators.runtimes.base import Runtime

PASSED, GATE, FAILED, UNAVAILABLE = "passed", "failed its gate", "failed", "unavailable"


@dataclass
class RowParity:
    """A row's outputs against the training form's on the seeded probe inputs."""

    max_abs_err: float
    max_rel_err: float
    top1_agreement: float  # on the rows whose reference top-1 is not a near-tie
    bound: Optional[float]  # the gate's max abs error (None: reported only)
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> Optional[bool]:
        return None if self.bound is None else not self.violations


@dataclass
class RowLatency:
    """A row's speed at the timing batch, interleaved with PyTorch eager (the training form)."""

    batch: int
    median_ms: float
    p99_ms: float
    images_per_s: float
    ratio: float  # median latency / PyTorch eager's
    ci_low: float
    ci_high: float
    pairs: int
    clock: str


@dataclass
class MatrixRow:
    """One format: its status (passed / failed its gate / failed / unavailable, with the reason) and numbers."""

    spec: FormatSpec
    status: str
    reason: str = ""
    artifact: Optional[str] = None
    size_bytes: Optional[int] = None
    parity: Optional[RowParity] = None
    accuracy: Optional[Interval] = None  # top-1 on the data
    agreement: Optional[Interval] = None  # top-1 agreement with the training form on the data
    drop_points: Optional[float] = None  # training form's top-1 minus this row's, percentage points
    latency: Optional[RowLatency] = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["spec"] = asdict(self.spec)
        out["parity_passed"] = self.parity.passed if self.parity else None
        return out


@dataclass
class Context:
    """What every row is held to, and where its files go."""

    model: Path
    out_dir: Path
    reference: Runtime
    probe: np.ndarray
    probe_ref: np.ndarray
    x: np.ndarray  # the timing input
    export: ExportOptions
    engine_batch: int
    threads: Optional[int] = None
    seed: int = 0
    calib: Optional[str] = None
    onnx: Optional[Path] = None  # the fp32 export, once made
    onnx_error: Optional[Exception] = None  # why it could not be made


def file_size(path: Path) -> int:
    """Bytes of a file and of its ONNX external data beside it."""
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


def fp32_onnx(ctx: Context) -> Path:
    """The fp32 ONNX export (made once, through the export pipeline with the options passed through)."""
    if ctx.onnx_error is not None:
        raise BadInputError(f"needs the fp32 ONNX export, which failed: {ctx.onnx_error}")
    if ctx.onnx is None:
        try:
            ctx.onnx = run_export(ctx.export).onnx_path
        except Exception as exc:
            ctx.onnx_error = exc
            raise
    return ctx.onnx


def open_row(spec: FormatSpec, ctx: Context) -> tuple[Runtime, Path]:
    """The row's runtime and the artifact it runs (raises what making or opening it raised)."""
    if spec.runtime == "torch":
        opts = TorchBenchOptions(device=spec.device, dtype=spec.precision, fold=spec.fold, seed=ctx.seed)
        size = tuple(ctx.probe.shape[2:])
        rt, _ = load_torch_runtime(ctx.model, opts, (int(size[0]), int(size[1])), ctx.threads)
        return rt, ctx.model
    onnx_path = fp32_onnx(ctx)
    if spec.precision == "int8":  # ONNX Runtime's CPU flavour (unsigned activations); TensorRT's symmetric one
        assert ctx.calib is not None  # formats.availability said so
        target = "tensorrt" if spec.runtime == "engine" else "cpu"
        onnx_path = quantize_ungated(onnx_path, ctx.calib, ctx.out_dir / f"{onnx_path.stem}.int8-{target}.onnx", target)
    if spec.runtime == "onnx":
        return open_runtime(onnx_path, "onnx", threads=ctx.threads, spin=False), onnx_path
    engine = ctx.out_dir / f"{ctx.model.stem}.{spec.precision}.plan"
    build_engine(validate_build_options(onnx_path, engine, fp16=spec.precision == "fp16", min_batch=1,
                                        opt_batch=int(ctx.x.shape[0]), max_batch=ctx.engine_batch))
    return open_runtime(engine, "engine"), engine


def row_parity(spec: FormatSpec, rt: Runtime, ctx: Context, tol: Optional[Tolerance]) -> RowParity:
    out = np.asarray(rt.run(ctx.probe), dtype=np.float64)
    metrics = compare(ctx.probe_ref, out)
    shown = tol or Tolerance()
    agree, counted = decisive_top1(ctx.probe_ref, out, shown.bound(metrics["max_ref"]))
    metrics["top1_agreement"] = agree / counted if counted else 1.0
    violations = tol.violations(metrics) if tol is not None else []
    return RowParity(metrics["max_abs_err"], metrics["max_rel_err"], metrics["top1_agreement"],
                     tol.bound(metrics["max_ref"]) if tol is not None else None, violations)


def scores_on(rt: Runtime, source: DataSource, recipe: Optional[Recipe], batch: int) -> Scores:
    """Top-k classes of one runtime on the data (streamed)."""
    (result,) = score([rt], batches(source, recipe, batch))
    return result


def row_accuracy(row: MatrixRow, result: Scores, ref: Scores, source: DataSource, seed: int) -> None:
    """Top-1 with its Wilson interval, agreement with the training form and the drop, into ``row``."""
    labels = np.asarray([i.label for i in source.items], dtype=np.int64) if source.labelled else None
    names = [i.name for i in source.items]
    comparison = compare_predictions(result.topk[:, 0], ref.topk[:, 0], labels, names, seed=seed)
    row.agreement = comparison.agreement
    if labels is not None:
        row.accuracy = accuracy_report(result.topk, labels, source.classes).top1
        ref_top1 = accuracy_report(ref.topk, labels, source.classes).top1
        row.drop_points = 100 * (ref_top1.value - row.accuracy.value)


def row_latency(rt: Runtime, ctx: Context, warmup: str, duration: float) -> RowLatency:
    """Interleaved with the training form on PyTorch eager (the reference row: with itself, an A/A)."""
    ab = interleaved(rt, ctx.reference, ctx.x, warmup=warmup, duration=duration, seed=ctx.seed)
    return RowLatency(ab.a.batch, ab.a.median_ms, ab.a.p99_ms, ab.a.throughput_ips, ab.ratio, ab.ci_low, ab.ci_high,
                      ab.a.n, ab.a.clock)


def gate(row: MatrixRow, max_drop: float) -> None:
    """passed, or failed its gate naming why: parity beyond the row's tolerance, accuracy dropped too far."""
    reasons = []
    if row.parity is not None and row.parity.passed is False:
        reasons.append("parity: " + "; ".join(row.parity.violations))
    if row.drop_points is not None and row.drop_points > max_drop:
        reasons.append(f"top-1 accuracy {row.drop_points:.2f} points below the training form's "
                       f"(> {max_drop:g})")
    row.status, row.reason = (GATE, "; ".join(reasons)) if reasons else (PASSED, "")
