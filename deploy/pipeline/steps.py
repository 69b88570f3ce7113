"""The steps of the export pipeline, one plain function each, shared by export and validate.

load -> fold -> export -> simplify -> graph checks -> parity -> write. Each step takes
typed inputs and returns its own result object; ``deploy.pipeline.export.run_export`` chains
them and ``deploy.pipeline.validate.run_validate`` reuses load, fold and parity.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from torch import nn

from deploy.core.atomic import Transaction, json_bytes, output_lock
from deploy.core.errors import BadInputError
from deploy.core.limits import check_finite
from deploy.core.metrics import Tolerance
from deploy.core.threads import ThreadPlan
from deploy.data.datasets import batches, open_data
from deploy.data.preprocess import META_KEY, METADATA_KEY, Recipe, parse_recipe
from deploy.fold.fold import FoldReport, fold_model
from deploy.load.module import LoadedModel
from deploy.load.source import ModelSource
from deploy.pipeline.report import HeldOutAccuracy
from deploy.pipeline.shapes import probe_forward, resolve_input_shape
from deploy.version import __version__
from exporters.onnx import stage_onnx
from exporters.simplify import GraphDiff, graph_diff
from validators.accuracy import accuracy_report, score
from validators.parity import ParityReport, check_parity, first_divergence, seeded_inputs
from validators.runtimes.base import Runtime
from validators.runtimes.onnxruntime import OrtRuntime
from validators.runtimes.pytorch import TorchRuntime, torch_threads


def tolerance_from(atol: float | None, rtol: float | None) -> Tolerance:
    """``atol``/``rtol`` -> Tolerance: pass when max abs error <= atol + rtol * max|ref|."""
    check_finite("atol", atol)
    check_finite("rtol", rtol)
    default = Tolerance()
    return Tolerance(rtol=default.rtol if rtol is None else rtol, atol=default.atol if atol is None else atol)


def load_step(source: ModelSource, *, input_size: str | int | Sequence[int] | None = None,
              input_shape: str | Sequence[int] | None = None) -> tuple[LoadedModel, tuple[int, int, int]]:
    """Load the model and settle the input shape it is exported and checked at (a probe forward pass)."""
    loaded = source.load()
    shape = resolve_input_shape(loaded, input_size, input_shape)
    static_batch = loaded.program_dims[0] if loaded.program_dims else None
    probe_forward(loaded.model, shape, static_batch or 1)
    return loaded, shape


def fold_step(loaded: LoadedModel, input_shape: tuple[int, ...], seed: int,
              rewrite: bool = True) -> tuple[nn.Module, FoldReport]:
    """The deploy form of the loaded model and the per-layer fold report (float64 probe);
    ``rewrite`` adds the exact deploy rewrites (``deploy.fold.rewrite``)."""
    static_batch = loaded.program_dims[0] if loaded.program_dims else None
    return fold_model(loaded.model, probe_shape=input_shape, seed=seed, rewrite=rewrite, probe_batch=static_batch or 2)


def rewrite_comparison(loaded: LoadedModel, input_shape: tuple[int, ...], rewritten: onnx.ModelProto,
                       export: Callable[[nn.Module], onnx.ModelProto]) -> GraphDiff:
    """What the rewrites changed in the graph: the model folded without them, through the same
    ``export`` (export and simplify) as ``rewritten``, compared with it."""
    plain, _ = fold_model(loaded.model, probe_shape=input_shape, rewrite=False, measure=False)
    return graph_diff(export(plain), rewritten)


def onnx_metadata(loaded: LoadedModel, folded: bool, input_shape: Sequence[int],
                  fold_report: FoldReport | None = None, rewrite: bool = True,
                  recipe: Recipe | None = None) -> dict[str, str]:
    """The ``convdeploy.*`` metadata an export writes into the ONNX file (and nothing else: the
    simplifier's own keys are dropped). ``convdeploy.rewrites``: how many exact deploy rewrites
    the fold applied, ``off`` without ``rewrite``, ``none`` without a fold; ``convdeploy.preprocess``: the
    preprocessing recipe (``deploy.data.preprocess``), when there is one."""
    rewrites = (str(len(fold_report.rewrites)) if rewrite else "off") if folded and fold_report else "none"
    return {
        "convdeploy.version": __version__,
        "convdeploy.arch": loaded.arch or "custom",
        "convdeploy.conv": loaded.conv or "custom",
        "convdeploy.conv_kwargs": ",".join(f"{k}={v}" for k, v in sorted(loaded.conv_kwargs.items())),
        "convdeploy.folded": "yes" if folded else "no",
        "convdeploy.rewrites": rewrites,
        "convdeploy.source_sha256": loaded.sha256,
        "convdeploy.input_shape": "x".join(str(int(s)) for s in input_shape),
        **({METADATA_KEY: recipe.to_json()} if recipe is not None else {}),
    }


def parity_batches(fixed_batch: int | None) -> tuple[int, ...]:
    """Batch 1 and a batch > 1, or the graph's own fixed batch."""
    return (fixed_batch,) if fixed_batch else (1, 3)


def parity_threads(plan: ThreadPlan | None, folded: bool) -> tuple[int | None, int]:
    """(intra-op threads of each runtime, runtimes run at once) of the parity check: the training form,
    the folded model when there is one, and ONNX Runtime side by side on the free CPUs of ``plan``
    (None: the libraries' own thread counts, one runtime at a time)."""
    if plan is None:
        return None, 1
    return plan.split(3 if folded else 2)


def parity_step(loaded: LoadedModel, folded: nn.Module | None, ort: OrtRuntime, proto: onnx.ModelProto,
                input_shape: tuple[int, ...], batches: tuple[int, ...], samples: int, seed: int, tol: Tolerance,
                fold_report: FoldReport | None, extra_sizes: Sequence[tuple[int, int]] = (),
                plan: ThreadPlan | None = None) -> tuple[ParityReport, dict[str, Runtime]]:
    """Training form vs (folded torch and) ONNX Runtime, every output by name, at ``input_shape``
    and any ``extra_sizes``; on failure, the first diverging layer. With a ``plan`` the runtimes run
    side by side (``parity_threads``; ``ort`` should have been made with those threads).

    Returns the report and the runtimes by role, for the accuracy step.
    """
    reference = TorchRuntime(loaded.model, name="training-form")
    folded_rt = TorchRuntime(folded, name="folded-torch") if folded is not None else None
    candidates = ([folded_rt] if folded_rt is not None else []) + [ort]
    threads, slots = parity_threads(plan, folded is not None)
    with torch_threads(threads):
        parity = check_parity(reference, candidates, input_shape, samples, batches, seed, tol,
                              extra_sizes=extra_sizes, slots=slots)
    if not parity.passed:
        parity.first_divergence = _first_divergence(parity, loaded, folded, proto, input_shape, batches, seed, tol,
                                                    fold_report, extra_sizes)
    runtimes: dict[str, Runtime] = {"training_form": reference}
    if folded_rt is not None:
        runtimes["folded"] = folded_rt
    runtimes["onnxruntime"] = ort
    return parity, runtimes


def _first_divergence(parity: ParityReport, loaded: LoadedModel, folded: nn.Module | None, proto: onnx.ModelProto,
                      input_shape: tuple[int, ...], batches: tuple[int, ...], seed: int, tol: Tolerance,
                      fold_report: FoldReport | None, extra_sizes: Sequence[tuple[int, int]]) -> str | None:
    """The worst fold when the folded torch model already differs, else the first module whose
    ONNX tensor differs (at the export size, then at the other sizes)."""
    folded_failed = folded is not None and not parity.candidates[0].passed
    if folded_failed and fold_report is not None and fold_report.rows:
        worst = max(fold_report.rows, key=lambda r: r.max_rel_error)
        whole = fold_report.end_to_end
        if whole is not None and not whole[1] <= max(10 * worst.max_rel_error, 1e-9):
            return (f"the folded model as a whole (float64 rel error {whole[1]:.3g}, while each fold is exact on its "
                    f"own input, worst {worst.max_rel_error:.3g}: the model reads folded weights elsewhere)")
        return f"{worst.name} ({worst.kind}, fold rel error {worst.max_rel_error:.3g})"
    model = folded if folded is not None else loaded.model
    for shape in [tuple(input_shape)] + [(input_shape[0], h, w) for h, w in extra_sizes]:
        try:
            found = first_divergence(model, proto, seeded_inputs(shape, batches[:1], 1, seed)[0], tol)
        except Exception:  # noqa: BLE001 - the graph may not even run at this size; the parity reasons say so
            found = None
        if found is not None:
            return found if shape == tuple(input_shape) else f"{found} (at {'x'.join(map(str, shape))})"
    return None


def held_out_accuracy(loaded: LoadedModel, runtimes: dict[str, Runtime], data: str | None = None,
                      recipe: Recipe | None = None, plan: ThreadPlan | None = None) -> HeldOutAccuracy | None:
    """Top-1 accuracy (with its interval) of each runtime on ``data`` (``deploy.data``), or on the held-out
    split of the data set the checkpoint names (the bundled digits); None when there is neither. With a
    ``plan`` the runtimes run side by side as in the parity step."""
    if data is None and loaded.meta.get("dataset") != "digits":
        return None
    start = time.perf_counter()
    source = open_data(data or "digits")
    if not source.labelled:
        raise BadInputError(f"{source.description} has no labels: held-out accuracy needs labelled `data`")
    threads, slots = parity_threads(plan, "folded" in runtimes)
    with torch_threads(threads):
        results = score(list(runtimes.values()), batches(source, recipe, 64), k=5, slots=slots)
    labels = np.asarray([i.label for i in source.items], dtype=np.int64)
    for result in results:
        if labels.size and labels.max() >= result.classes:
            raise BadInputError(f"{source.description} has labels up to {labels.max()} but the model scores "
                                f"{result.classes} classes: give data labelled in the model's classes")
    reports = {name: accuracy_report(r.topk, labels, source.classes) for name, r in zip(runtimes, results)}
    return HeldOutAccuracy(source.description, len(labels), reports,
                           {name: r.images_per_s for name, r in zip(runtimes, results)}, time.perf_counter() - start)


def export_recipe(loaded: LoadedModel, preprocess: str | None) -> Recipe | None:
    """The preprocessing an export records: ``preprocess`` over the checkpoint's own recipe."""
    recorded = loaded.meta.get(META_KEY)
    base = Recipe.from_dict(recorded) if isinstance(recorded, dict) else None
    return parse_recipe(preprocess, base=base) if preprocess else base


def written_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset the file declares (what a report records, read back from the graph)."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def write_step(proto: onnx.ModelProto, output: Path, report_path: Path, report: Any) -> dict[str, Any]:
    """Write the ONNX file and its report, both or neither (docs/architecture.md "Writes").

    Under the output's lock (a second writer of the same output waits), both go to
    temporary files first; the report records the sha256 of the ONNX bytes written; then
    the ONNX file and the report are renamed into place with SIGINT/SIGTERM held. An
    existing pair stays whole until the new pair is on disk. Returns the record the report holds.
    """
    with output_lock(output), Transaction() as txn:
        onnx_sha = stage_onnx(txn, proto, output)
        report.outputs = {"onnx": {"path": str(output), "sha256": onnx_sha}}
        record = report.to_dict()
        txn.stage_bytes(report_path, json_bytes(record))
        txn.commit()
    return record
