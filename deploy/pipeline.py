"""The export pipeline as one plain function: load -> fold -> export -> simplify -> check -> parity -> write.

The CLI (`deploy export`) and `deploy claims` both call ``run_export``; each step is a
plain function in the module DESIGN.md names, and ``StepLog`` only times and shows them.
Nothing is written until every gate has passed: the ONNX file and its report go to
temporary names and are renamed into place together at the end.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from deploy import __version__
from deploy.atomic import check_output_path, sha256_file, write_json_atomic
from deploy.checkpoint import LoadedModel, load_checkpoint
from deploy.errors import BadInputError, GraphCheckError, ParityError
from deploy.environment import device_description, versions
from deploy.fold import fold_model


@dataclass
class ExportOptions:
    """Everything `deploy export` can be told; defaults are the CLI's."""

    checkpoint: Path
    output: Optional[Path] = None
    report: Optional[Path] = None
    fold: bool = True
    opset: Optional[int] = None
    batch: str = "dynamic"  # "dynamic" or a fixed batch size as text
    input_size: Optional[int] = None
    exporter: str = "dynamo"
    simplify: bool = True
    atol: Optional[float] = None  # relative to max|ref| when rtol is None (DESIGN default)
    rtol: Optional[float] = None
    samples: int = 8
    seed: int = 0
    strict: bool = True  # graph-check findings fail the run (exit 4)
    arch: Optional[str] = None
    conv: Optional[str] = None
    conv_kwargs: dict[str, Any] = field(default_factory=dict)
    trust_pickle: bool = False
    # TensorRT engine (GPU only): built from the checked ONNX, then checked against ONNX Runtime
    engine: Optional[Path] = None
    fp16: bool = False
    min_batch: Optional[int] = None
    opt_batch: Optional[int] = None
    max_batch: Optional[int] = None
    workspace: Optional[float] = None
    timing_cache: Optional[Path] = None


class StepLog:
    """Times each pipeline step; ``on_step(name, seconds)`` lets a UI show it."""

    def __init__(self, on_start: Callable[[str], None] | None = None, on_done: Callable[[str, float], None] | None = None):
        self.seconds: dict[str, float] = {}
        self._on_start, self._on_done = on_start, on_done

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self._on_start:
            self._on_start(name)
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        if self._on_done:
            self._on_done(name, self.seconds[name])


def resolve_input_shape(loaded: LoadedModel, input_size: Optional[int]) -> tuple[int, int, int]:
    """(C, H, W) from --input-size, else the checkpoint, else an error that says what to pass."""
    shape = loaded.input_shape
    if shape is None:
        first_conv = next((m for m in loaded.model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is None or input_size is None:
            raise BadInputError("the checkpoint does not record its input shape: pass --input-size S")
        return (first_conv.in_channels, input_size, input_size)
    if input_size is not None:
        if input_size < 1:
            raise BadInputError(f"--input-size must be positive, got {input_size}")
        return (shape[0], input_size, input_size)
    return tuple(shape)  # type: ignore[return-value]


def probe_forward(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Run one batch-1 forward pass; a shape the model cannot take becomes a usable error."""
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    except (RuntimeError, ValueError) as exc:
        size = "x".join(str(s) for s in input_shape[1:])
        reason = str(exc).strip().splitlines()[0][:300]
        raise BadInputError(f"the model cannot take a {size} input ({reason}); choose another --input-size") from exc


def parse_batch(batch: str) -> Optional[int]:
    """None for a dynamic batch axis, else the fixed batch size."""
    if batch == "dynamic":
        return None
    try:
        value = int(batch)
    except ValueError:
        raise BadInputError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}") from None
    if value < 1:
        raise BadInputError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    return value


def default_output(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".onnx")


def report_path_for(output: Path) -> Path:
    return output.with_name(output.name[: -len(".onnx")] + ".report.json" if output.name.endswith(".onnx") else output.name + ".report.json")


def held_out_accuracy(loaded: LoadedModel, runtimes: dict[str, Callable[[np.ndarray], np.ndarray]]) -> Optional[dict[str, Any]]:
    """Accuracy of each runtime on the checkpoint's data set's test split, when it names one."""
    if loaded.meta.get("dataset") != "digits":
        return None
    from deploy.digits import load_digits
    from deploy.train import accuracy

    _, test = load_digits(size=loaded.input_shape[-1] if loaded.input_shape else 32)
    result: dict[str, Any] = {"dataset": "digits", "split": "test", "images": int(len(test.y))}
    result.update({name: accuracy(predict, test) for name, predict in runtimes.items()})
    return result


@dataclass
class ExportOutcome:
    """What `deploy export` produced: the files, the report, and the gates' verdicts."""

    onnx_path: Path
    report_path: Path
    report: dict[str, Any]
    loaded: LoadedModel
    deploy_model: nn.Module
    graph: Any  # validators.graph.GraphReport
    parity: Any  # validators.parity.ParityReport


def tolerance_from(atol: Optional[float], rtol: Optional[float]):
    """--atol/--rtol -> Tolerance: pass when max abs error <= atol + rtol * max|ref|."""
    from validators.parity import Tolerance

    if (atol is not None and atol < 0) or (rtol is not None and rtol < 0):
        raise BadInputError("--atol and --rtol must be >= 0")
    default = Tolerance()
    return Tolerance(rtol=default.rtol if rtol is None else rtol, atol=default.atol if atol is None else atol)


def _metadata(loaded: LoadedModel, folded: bool) -> dict[str, str]:
    return {
        "convdeploy.version": __version__,
        "convdeploy.arch": loaded.arch or "custom",
        "convdeploy.conv": loaded.conv or "custom",
        "convdeploy.conv_kwargs": ",".join(f"{k}={v}" for k, v in sorted(loaded.conv_kwargs.items())),
        "convdeploy.folded": "yes" if folded else "no",
        "convdeploy.source_sha256": loaded.sha256,
    }


def explain_parity_failure(parity, fold_report, deploy_model, proto, input_shape, tol, seed) -> None:
    """Fill ``parity.first_divergence``: the fold's worst layer, or the first ONNX node that drifts."""
    from validators.parity import first_divergence, seeded_inputs

    failed = {c.name for c in parity.candidates if not c.passed}
    if "folded-torch" in failed and fold_report is not None and fold_report.rows:
        worst = max(fold_report.rows, key=lambda r: r.max_rel_error)
        parity.first_divergence = f"{worst.name} ({worst.kind}, fold rel error {worst.max_rel_error:.3g})"
        return
    x = seeded_inputs(input_shape, (1,), 1, seed)[0]
    parity.first_divergence = first_divergence(deploy_model, proto, x, tol)


def build_checked_engine(proto, opts: ExportOptions, input_shape: tuple[int, ...], ort, output: Path) -> dict[str, Any]:
    """Build the TensorRT engine from ``proto`` and check it against ONNX Runtime fp32.

    The ONNX goes to a temporary file beside the output (the final one is written only
    after every gate). A failed parity check removes the engine and its JSON: a failed run
    leaves nothing behind. Tolerance: fp32 as for ONNX, fp16 scaled to fp16.
    """
    import tempfile

    from exporters.onnx import save_onnx
    from exporters.tensorrt import build_engine, metadata_path, validate_build_options
    from validators.parity import Tolerance, check_parity
    from validators.trt_runtime import TensorRTRuntime

    with tempfile.TemporaryDirectory(prefix=".convdeploy-", dir=output.parent) as tmp:
        onnx_tmp = save_onnx(proto, Path(tmp) / output.name)
        build_opts = validate_build_options(
            onnx_tmp, opts.engine, fp16=opts.fp16, min_batch=opts.min_batch, opt_batch=opts.opt_batch,
            max_batch=opts.max_batch, workspace_gib=opts.workspace, timing_cache=opts.timing_cache,
        )
        meta = build_engine(build_opts)
    try:
        trt = TensorRTRuntime(opts.engine)
        lo, hi = trt.profile.min[0], trt.profile.max[0]
        batches = tuple(sorted({lo, hi}))
        tol = Tolerance.for_precision("fp16" if opts.fp16 else "fp32")
        parity = check_parity(ort, [trt], input_shape, opts.samples, batches, opts.seed, tol)
        parity.raise_if_failed()
    except BaseException:
        Path(opts.engine).unlink(missing_ok=True)
        metadata_path(opts.engine).unlink(missing_ok=True)
        raise
    return {"path": str(opts.engine), "metadata": meta, "parity": parity.to_dict()}


def run_export(opts: ExportOptions, log: Optional[StepLog] = None) -> ExportOutcome:
    """The whole `deploy export`: every gate passes, then MODEL.onnx and its report appear together."""
    from exporters.onnx import export_onnx_detailed, save_onnx, simplify_onnx
    from validators.graph import check_graph
    from validators.parity import check_parity
    from validators.runtimes import OrtRuntime, TorchRuntime

    log = log or StepLog()
    checkpoint = Path(opts.checkpoint)
    output = Path(opts.output) if opts.output else default_output(checkpoint)
    report_path = Path(opts.report) if opts.report else report_path_for(output)
    if output.suffix != ".onnx":
        raise BadInputError(f"output {output} must end in .onnx")
    for path in (output, report_path):
        check_output_path(path)
        if path.resolve() == checkpoint.resolve():
            raise BadInputError(f"output {path} would overwrite the input checkpoint: choose another -o path")
    if opts.engine is not None:
        from exporters.tensorrt import require_tensorrt

        check_output_path(opts.engine)
        require_tensorrt()  # exit 5 before any work when TensorRT or the GPU is missing
    fixed_batch = parse_batch(opts.batch)
    if opts.samples < 1:
        raise BadInputError(f"--samples must be >= 1, got {opts.samples}")
    tol = tolerance_from(opts.atol, opts.rtol)

    with log.step("load"):
        loaded = load_checkpoint(
            checkpoint, arch=opts.arch, conv=opts.conv, conv_kwargs=opts.conv_kwargs, trust_pickle=opts.trust_pickle
        )
        input_shape = resolve_input_shape(loaded, opts.input_size)
        probe_forward(loaded.model, input_shape)
    with log.step("fold"):
        fold_report = None
        deploy_model = loaded.model
        if opts.fold:
            deploy_model, fold_report = fold_model(loaded.model, probe_shape=input_shape, seed=opts.seed)
    with log.step("export"):
        exported = export_onnx_detailed(
            deploy_model,
            input_shape,
            opset=opts.opset,
            exporter=opts.exporter,
            dynamic_batch=fixed_batch is None,
            batch_size=fixed_batch or 1,
            metadata=_metadata(loaded, opts.fold),
        )
    with log.step("simplify"):
        proto, simplify = exported.model, None
        # --no-fold keeps the training-form graph as exported: onnxsim would constant-fold the
        # kernel-computing subgraphs, i.e. fold behind the user's back.
        if opts.simplify and opts.fold:
            proto, simplify = simplify_onnx(exported.model, input_shape, tol=tol, seed=opts.seed)
    with log.step("graph checks"):
        graph = check_graph(proto, input_shape)
    with log.step("parity"):
        reference = TorchRuntime(loaded.model, name="training-form")
        candidates = [TorchRuntime(deploy_model, name="folded-torch")] if opts.fold else []
        ort = OrtRuntime(proto, name="onnxruntime-cpu")
        candidates.append(ort)
        batches = (fixed_batch,) if fixed_batch else (1, 3)
        parity = check_parity(reference, candidates, input_shape, opts.samples, batches, opts.seed, tol)
        if not parity.passed:
            explain_parity_failure(parity, fold_report, deploy_model, proto, input_shape, tol, opts.seed)
        predictors = {"training_form": reference.run, "onnxruntime": ort.run}
        if opts.fold:
            predictors["folded"] = candidates[0].run
        accuracy = held_out_accuracy(loaded, predictors)

    report: dict[str, Any] = {
        "tool": "convdeploy export",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        "device": device_description(),
        "input": {"path": str(checkpoint), **loaded.describe()},
        "options": {
            "fold": opts.fold,
            "exporter": opts.exporter,
            "opset": exported.opset,
            "batch": opts.batch,
            "input_shape": list(input_shape),
            "simplify": opts.simplify and opts.fold,
            "strict": opts.strict,
        },
        "seeds": {"parity": opts.seed, "fold_probe": opts.seed},
        "tolerance": parity.tolerance,
        "fold": fold_report.to_dict() if fold_report else None,
        "export": exported.to_dict(),
        "simplify": simplify.to_dict() if simplify else None,
        "graph": graph.to_dict(),
        "parity": parity.to_dict(),
        "accuracy": accuracy,
        "seconds": log.seconds,
    }
    if not parity.passed:
        parity.raise_if_failed()
    if opts.strict:
        graph.raise_if_failed()
    if opts.engine is not None:
        with log.step("tensorrt"):
            report["engine"] = build_checked_engine(proto, opts, input_shape, ort, output)
    with log.step("write"):
        try:
            save_onnx(proto, output)
            try:
                report["outputs"] = {"onnx": {"path": str(output), "sha256": sha256_file(output)}}
                report["seconds"] = dict(log.seconds)
                write_json_atomic(report_path, report)
            except BaseException:
                output.unlink(missing_ok=True)
                raise
        except OSError as exc:  # disk full, a directory that became read-only mid-run, ...
            raise BadInputError(f"cannot write {output} or {report_path} ({exc.strerror or exc}): "
                                "free some space or choose another -o path") from exc
    return ExportOutcome(output, report_path, report, loaded, deploy_model, graph, parity)
