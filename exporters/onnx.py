"""torch -> ONNX export, atomic save and onnxsim simplification (docs/architecture.md).

One clear way to write: ``export_onnx`` returns the checked ``onnx.ModelProto`` and
writes nothing unless a ``path`` is given; the pipeline exports with ``path=None``,
simplifies, checks and validates, then calls ``save_onnx`` (temp name + rename) last, so a
failed run leaves no model.onnx.

Interface of every export: one input ``input`` (N, C, H, W) float32 and one graph output per
model output, named as ``deploy.core.outputs`` flattens them (``output`` for a single tensor,
dict keys, ``output_0``, ``output_1`` … for sequences); the batch axis is the symbolic
dimension ``batch`` (``dynamic_batch=True``) or a fixed N, and H/W are the symbolic
``height`` / ``width`` with ``dynamic_hw=True``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from deploy.core.atomic import Transaction, check_output_path
from deploy.core.errors import BadInputError, GraphCheckError, first_line
from exporters.failures import explain_export_failure
from exporters.interface import Axes, check_output_names, name_dynamic_dims, output_names
from exporters.opset import OPSET_RANGE, check_exporter, choose_opset

#: Protobuf cannot serialize a message of 2 GiB or more; above this, weights go to ``<name>.data``.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


@dataclass
class OnnxExport:
    """The exported graph plus how it was made (for the report)."""

    model: onnx.ModelProto
    exporter: str
    opset: int
    dynamic_batch: bool
    batch_size: int | None
    seconds: float
    weight_bytes: int
    captured_stdout: str = ""
    captured_warnings: list[str] = field(default_factory=list)
    dynamic_hw: bool = False
    output_names: list[str] = field(default_factory=list)
    opset_reason: str = ""  # why this opset (``exporters.opset.choose_opset``)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["nodes"] = len(self.model.graph.node)
        return d


@contextlib.contextmanager
def captured_output(into: dict[str, Any]) -> Iterator[None]:
    """Silence and keep the exporters' prints, warnings and ``torch.onnx`` log records."""
    out, err = io.StringIO(), io.StringIO()
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname}: {record.getMessage()}")

    logger = logging.getLogger("torch.onnx")  # torch._logging gives it its own stderr handler
    old_handlers, old_propagate = list(logger.handlers), logger.propagate
    for h in old_handlers:
        logger.removeHandler(h)
    handler = _Keep()
    logger.addHandler(handler)
    logger.propagate = False
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
        for h in old_handlers:
            logger.addHandler(h)
        logger.propagate = old_propagate
        into["stdout"] = out.getvalue() + err.getvalue()
        into["warnings"] = records + [f"{w.category.__name__}: {w.message}" for w in caught]


def _check_model_ready(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    if model.training:
        raise BadInputError("the model is in training mode: call model.eval() before exporting")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise BadInputError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    for name, t in model.state_dict().items():
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            raise BadInputError(f"weight {name!r} contains NaN or Inf: the checkpoint is broken, retrain or reload it")
    return shape


def export_onnx_detailed(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    opset: int | None = None,
    exporter: str = "dynamo",
    dynamic_batch: bool = True,
    dynamic_hw: bool = False,
    batch_size: int = 1,
    metadata: Mapping[str, str] | None = None,
    optimize: bool = True,
) -> OnnxExport:
    """Export ``model`` (eval mode) and run ``onnx.checker`` with ``full_check=True``.

    ``exporter="dynamo"`` (default) uses ``torch.export``; its ONNX optimizer
    (``optimize=True``) already folds BatchNorm into Conv and constant-folds small
    weight-only subgraphs (inputs up to 8192 elements). ``"torchscript"`` traces. Without
    ``opset`` the targets choose it (``exporters.opset.choose_opset``: 20 where they all take
    ``Gelu``, else the exporter's default, 18 or 17).
    With ``dynamic_batch`` the graph is traced at batch 2 (torch.export specializes size 1);
    ``dynamic_hw`` makes H and W symbolic too (whether the graph really generalises to other
    sizes is for parity at a second size to prove). Every model output becomes one graph
    output, named as ``deploy.core.outputs`` flattens them.
    """
    check_exporter(exporter)
    shape = _check_model_ready(model, input_shape)
    if not dynamic_batch and batch_size < 1:
        raise BadInputError(f"batch size must be >= 1, got {batch_size}")
    choice = choose_opset(exporter, opset)
    opset = choice.opset
    n = 2 if dynamic_batch else batch_size
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
    names = output_names(model, x[:1] if dynamic_batch else x, shape)
    captured: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        with captured_output(captured):
            proto = _run_exporter(model, x, exporter, opset, Axes(dynamic_batch, dynamic_hw, names), optimize)
    except BadInputError:
        raise
    except Exception as exc:
        hint = "try the `exporter` torchscript" if exporter == "dynamo" else "try the `exporter` dynamo"
        if dynamic_batch or dynamic_hw:
            hint += " or fixed sizes (`batch` N, `dynamic` batch)"
        raise BadInputError(explain_export_failure(model, x, exc, exporter, hint)) from exc
    seconds = time.perf_counter() - start
    written = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if written != opset:
        raise BadInputError(f"the {exporter} exporter wrote opset {written} where `opset` {opset} was asked: "
                            f"choose an opset in {OPSET_RANGE[exporter][0]}..{OPSET_RANGE[exporter][1]}")
    check_output_names(proto, names)
    name_dynamic_dims(proto, dynamic_hw)
    axes = ",".join(a for a, on in (("batch", dynamic_batch), ("height,width", dynamic_hw)) if on) or "none"
    set_metadata(proto, {"convdeploy.exporter": exporter, "convdeploy.torch": torch.__version__,
                         "convdeploy.dynamic_axes": axes, **dict(metadata or {})})
    check_onnx(proto)
    return OnnxExport(proto, exporter, opset, dynamic_batch, None if dynamic_batch else n, seconds,
                        weight_bytes(proto), captured.get("stdout", ""), captured.get("warnings", []),
                        dynamic_hw=dynamic_hw, output_names=names, opset_reason=choice.reason)


def export_onnx(
    model: nn.Module, path: str | os.PathLike[str] | None, input_shape: Sequence[int], **options: Any
) -> onnx.ModelProto:
    """``export_onnx_detailed`` (same keyword options), then save atomically when ``path`` is given."""
    if path is not None:
        check_output_path(path)
    result = export_onnx_detailed(model, input_shape, **options)
    if path is not None:
        save_onnx(result.model, path)
    return result.model


def _run_exporter(model: nn.Module, x: torch.Tensor, exporter: str, opset: int, axes: Axes,
                  optimize: bool) -> onnx.ModelProto:
    if exporter == "dynamo":
        program = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=opset, input_names=["input"],
                                    output_names=axes.outputs, dynamic_shapes=axes.dynamo_shapes(), optimize=optimize,
                                    verbose=False)
        assert program is not None  # the dynamo exporter always returns its program
        return program.model_proto
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False,  # type: ignore[arg-type]  # it writes to file objects too
                      opset_version=opset, input_names=["input"],
                      output_names=axes.outputs, dynamic_axes=axes.torchscript_axes(), do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())



def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Add or replace model-level ``metadata_props`` (values stringified)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            proto.metadata_props.add(key=str(key), value=str(value))


def weight_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of initializer data held in the proto (decides external data)."""
    total = 0
    for t in proto.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            total += int(np.prod(t.dims, dtype=np.int64)) * max(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize, 1)
    return total


def check_onnx(proto: onnx.ModelProto) -> None:
    """``onnx.checker.check_model(full_check=True)``; via a temp file for models >= 2 GiB."""
    try:
        if weight_bytes(proto) < EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(proto, full_check=True)
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            _save_external(proto, path)
            onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise GraphCheckError(f"onnx.checker rejected the graph ({first_line(exc)}): report this export as a bug") from exc


def _save_external(proto: onnx.ModelProto, path: Path) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)


def stage_onnx(txn: Transaction, proto: onnx.ModelProto, path: str | os.PathLike[str], *,
               external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> str:
    """Stage ``proto`` for ``path`` in ``txn``; returns the sha256 of the .onnx bytes written.
    Below ``external_data_threshold`` bytes of weights: one self-contained file. Above:
    weights in ``<name>.data`` beside it, staged (and so renamed) before the .onnx, so that
    a half-finished write never leaves a loadable model."""
    out = check_output_path(path)
    if weight_bytes(proto) < external_data_threshold:
        return txn.stage_bytes(out, proto.SerializeToString())
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _save_external(proto, tmpdir / out.name)
        txn.adopt(tmpdir / f"{out.name}.data", out.parent / f"{out.name}.data")
        return txn.adopt(tmpdir / out.name, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def save_onnx(proto: onnx.ModelProto, path: str | os.PathLike[str], *,
              external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> Path:
    """Write ``proto`` atomically (``stage_onnx`` and commit)."""
    with Transaction() as txn:
        stage_onnx(txn, proto, path, external_data_threshold=external_data_threshold)
        txn.commit()
    return Path(path)
