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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from deploy.core.errors import BadInputError
from deploy.fold.fold import FoldReport, fold_model
from deploy.models.zoo import build_model
from deploy.pipeline.export import ExportOptions, StepLog, run_export
from deploy.pipeline.report import RunReport
from validators.fold_coverage import FoldCoverageReport
from validators.graph import GraphReport
from validators.parity import OutputParity, ParityReport

__all__ = ["ExportResult", "build_model", "export", "fold_model"]


@dataclass
class ExportResult:
    """What ``export`` wrote and measured: the paths, the typed report and the deploy-form module."""

    onnx_path: Path
    report_path: Path
    report: RunReport
    deploy_model: nn.Module

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
    is_module = isinstance(model, nn.Module)
    try:
        opts = ExportOptions(checkpoint=None if is_module else Path(model),  # type: ignore[arg-type]
                             module=model if is_module else None,  # type: ignore[arg-type]
                             output=Path(output) if output is not None else None,
                             input_shape=input_shape,
                             fold=fold, **options)
    except TypeError as exc:  # an option ExportOptions does not have
        known = ", ".join(f.name for f in dataclasses.fields(ExportOptions) if f.name not in ("checkpoint", "module"))
        raise BadInputError(f"export(): {exc}; the options are {known}") from None
    outcome = run_export(opts, StepLog(on_done=progress))
    return ExportResult(outcome.onnx_path, outcome.report_path, outcome.report, outcome.deploy_model)
