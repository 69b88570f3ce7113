"""The Python API: ``export`` runs the gated pipeline of `deploy export` on a module or a file.

``from deploy import export, fold_model, build_model`` (the package's ``__getattr__`` imports
this module on first use, so ``import deploy`` stays torch-free)::

    result = export(model, input_shape=(3, 224, 224), output="model.onnx", fold=True)
    result.parity.passed, result.fold.rows, result.graph.op_histogram, result.seconds

``export`` is ``deploy.pipeline.export.run_export``: the same load, fold, export, simplify, graph
checks, fold coverage, parity and atomic write of the ONNX file and its report (both or
neither), raising the same ``deploy.core.errors`` exceptions the CLI turns into exit codes
(``BadInputError`` 2, ``ParityError`` 3, ``GraphCheckError`` 4, ``BackendUnavailableError`` 5).
An in-memory module is used as it is: never copied except for folding, never modified.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from deploy.core.errors import BadInputError
from deploy.core.progress import SILENT, StepLog, StepTimes
from deploy.evaluation.run import EvalOptions, EvalReport
from deploy.evaluation.run import evaluate as run_evaluate
from deploy.fold.fold import fold_model
from deploy.load.source import ModelSource
from deploy.models.zoo import build_model
from deploy.pipeline.export import ExportResult, run_export
from deploy.pipeline.options import ExportOptions

__all__ = ["ExportResult", "build_model", "evaluate", "export", "fold_model"]


def export(
    model: nn.Module | str | os.PathLike[str],
    input_shape: Sequence[int] | str | None = None,
    output: str | os.PathLike[str] | None = None,
    *,
    fold: bool = True,
    progress: Callable[[str, float], None] | None = None,
    **options: Any,
) -> ExportResult:
    """Fold, export, check and prove ``model``; write ``output`` and its ``.report.json`` together.

    ``model`` is an ``nn.Module`` in eval mode (no file needed) or the path of a checkpoint
    (as `deploy export` reads them). ``input_shape`` is (C, H, W) — needed for a module that
    does not carry ``input_shape`` — and ``output`` the ``.onnx`` path (default for a
    checkpoint: beside it). ``options`` are the other fields of ``deploy.pipeline.export.ExportOptions``
    with the CLI's defaults: ``dynamic`` ("batch", "hw", "batch,hw"), ``batch``, ``input_size``,
    ``exporter``, ``opset``, ``simplify``, ``atol``/``rtol``, ``samples``, ``seed``, ``strict``,
    ``strict_fold``, ``report``, ``engine`` …; for a checkpoint also ``arch``, ``conv``,
    ``conv_kwargs``, ``model_class``, ``model_args``, ``trust_pickle``. ``progress(step, seconds)``
    is called as each step finishes.
    """
    source_keys = {f.name for f in dataclasses.fields(ModelSource)} - {"checkpoint", "module"}
    source = ModelSource(checkpoint=None if isinstance(model, nn.Module) else Path(model),
                         module=model if isinstance(model, nn.Module) else None,
                         **{k: v for k, v in options.items() if k in source_keys})
    try:
        opts = ExportOptions(source=source, output=Path(output) if output is not None else None,
                             input_shape=input_shape, fold=fold,
                             **{k: v for k, v in options.items() if k not in source_keys})
    except TypeError as exc:  # an option ExportOptions does not have
        known = sorted(source_keys | {f.name for f in dataclasses.fields(ExportOptions)} - {"source"})
        raise BadInputError(f"export(): {exc}; the options are {', '.join(known)}") from None
    return run_export(opts, StepLog(StepTimes(progress) if progress is not None else SILENT))


def evaluate(artifact: str | os.PathLike[str], data: str | os.PathLike[str], *,
             vs: str | os.PathLike[str] | None = None, **options: Any) -> EvalReport:
    """Accuracy of ``artifact`` (a checkpoint, an ONNX file or an engine) on ``data`` (an image folder, a
    flat folder, an ``.npz`` or ``"digits"``), with 95 % intervals; with ``vs`` a second artifact on the
    same images and their comparison. ``options`` are the fields of ``deploy.evaluation.run.EvalOptions``:
    ``preprocess``, ``classes``, ``batch``, ``limit``, ``sample``, ``seed``, ``skip_bad``, ``device``,
    ``fold``, ``threads``."""
    try:
        opts = EvalOptions(**options)
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(EvalOptions))
        raise BadInputError(f"evaluate(): {exc}; the options are {known}") from None
    return run_evaluate(Path(artifact), str(data), vs=Path(vs) if vs is not None else None, options=opts)
