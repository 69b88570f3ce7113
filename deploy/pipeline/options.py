"""What `deploy export` can be told (``ExportOptions``, the CLI's defaults), checked for type, and the
paths it writes by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from deploy.core.errors import BadInputError
from deploy.load.source import ModelSource


@dataclass
class ExportOptions:
    """Everything `deploy export` can be told; defaults are the CLI's.

    The model is ``source`` (a file, or an in-memory ``nn.Module`` from the Python API; then
    ``output`` is required).
    """

    source: ModelSource = field(default_factory=ModelSource)
    output: Path | None = None
    report: Path | None = None
    fold: bool = True
    rewrite: bool = True  # the exact deploy rewrites (with fold)
    compare_rewrites: bool = True  # also export without them, for the report's node counts
    opset: int | None = None
    batch: str | int | None = None  # a fixed batch size (None or "dynamic": a dynamic batch axis)
    input_size: str | int | tuple[int, ...] | None = None  # H or HxW
    input_shape: str | Sequence[int] | None = None  # CxHxW
    dynamic: str | None = None  # batch (default), hw, batch,hw or none
    exporter: str = "dynamo"
    simplify: bool = True
    atol: float | None = None  # relative to max|ref| when rtol is None
    rtol: float | None = None
    samples: int = 8
    seed: int = 0
    strict: bool = True  # graph-check findings fail the run (exit 4)
    strict_fold: bool = False  # fold-coverage findings fail the run (exit 4)
    data: str | None = None  # held-out images for the accuracy line (``deploy.data``; default: the checkpoint's)
    preprocess: str | None = None  # the recipe recorded in the ONNX, over the checkpoint's (``deploy.data.preprocess``)
    # TensorRT engine (GPU only): built from the checked ONNX, then checked against ONNX Runtime
    engine: Path | None = None
    fp16: bool = False
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace: float | None = None
    timing_cache: Path | None = None


_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("atol", "rtol", "workspace"), (int, float)),
    **dict.fromkeys(("samples", "seed", "opset", "min_batch", "opt_batch", "max_batch"), (int,)),
    **dict.fromkeys(("dynamic", "exporter", "data", "preprocess"), (str,)),
    **dict.fromkeys(("fold", "rewrite", "compare_rewrites", "simplify", "strict", "strict_fold", "fp16"), (bool,)),
    "batch": (str, int),
}


def check_option_types(opts: ExportOptions) -> None:
    """Each option of the Python API of the type it takes (None where it is optional): a BadInputError
    naming the option, not a TypeError from deep inside a step."""
    for name, kinds in _OPTION_TYPES.items():
        value = getattr(opts, name)
        bad_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (bad_bool or not isinstance(value, kinds)):
            expected = " or ".join(k.__name__ for k in kinds)
            raise BadInputError(f"`{name}` must be a {expected}, got {type(value).__name__} {value!r}")
    opts.source.check_types()


def default_output(checkpoint: Path) -> Path:
    """``model.pt`` -> ``model.onnx``."""
    if not checkpoint.name or checkpoint.name in (".", ".."):
        raise BadInputError(f"{checkpoint} names no checkpoint file: point to a model.pt, or give the `output` path")
    return checkpoint.with_suffix(".onnx")


def report_path_for(output: Path) -> Path:
    """``model.onnx`` -> ``model.report.json``."""
    stem = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    return output.with_name(stem + ".report.json")


