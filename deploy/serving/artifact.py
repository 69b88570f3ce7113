"""What a served artifact is: its inputs and outputs, batch range and real input shape, read from a
checked ``.onnx`` (its graph) or a ``.plan`` (the ``engine.plan.json`` record convdeploy writes beside
every engine: no TensorRT is needed to read it).

An engine's record names its TensorRT version, compute capability and optimization profile; its
inputs and outputs come from the record's ``io`` (``deploy build`` writes it) or, for records made
before that, from the ONNX file it was built from, accepted only while its sha256 still matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from deploy.core.atomic import sha256_file
from deploy.core.errors import BadInputError
from validators.onnx_file import load_onnx
from validators.onnx_summary import TensorInfo, interface, interface_record
from validators.runtimes.tensorrt_env import ENGINE_SUFFIXES, BatchProfile, load_engine_metadata, metadata_path

ONNX, ENGINE = "onnx", "engine"


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: name, numpy dtype name and full shape (None for a dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class ServedArtifact:
    """What a Triton configuration needs to know about one artifact."""

    path: Path
    kind: str  # ONNX or ENGINE
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    batch_dynamic: bool  # the first axis of every tensor is a dynamic batch axis
    max_batch: int | None  # the engine profile's largest batch (None for an ONNX file: no upper bound)
    input_shape: tuple[int, ...] | None  # one real (C, H, W) of the input: metadata, or the profile's opt
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    gpu_name: str | None = None


def _tensor(info: TensorInfo | dict[str, Any]) -> Tensor:
    name, dtype, shape = (info.name, info.dtype, info.shape) if isinstance(info, TensorInfo) else \
        (info["name"], info["dtype"], info["shape"])
    if shape is None:
        raise BadInputError(f"tensor {name!r} declares no shape: re-export the model with convdeploy")
    return Tensor(str(name), str(dtype), tuple(d if isinstance(d, int) and d > 0 else None for d in shape))


def _batch_dynamic(inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...]) -> bool:
    tensors = inputs + outputs
    return all(len(t.shape) >= 1 and t.shape[0] is None for t in tensors)


def _metadata_shape(model: onnx.ModelProto) -> tuple[int, ...] | None:
    text = next((p.value for p in model.metadata_props if p.key == "convdeploy.input_shape"), None)
    try:
        return tuple(int(s) for s in text.split("x")) if text else None
    except ValueError:
        return None


def _check_single_input(path: Path, inputs: tuple[Tensor, ...]) -> None:
    if len(inputs) != 1:
        raise BadInputError(f"{path} has {len(inputs)} inputs; convdeploy serves single-input image models only")


def read_onnx(path: Path) -> ServedArtifact:
    """The artifact facts of a convdeploy ONNX file."""
    model = load_onnx(path)
    info_in, info_out = interface(model)
    inputs, outputs = tuple(map(_tensor, info_in)), tuple(map(_tensor, info_out))
    _check_single_input(path, inputs)
    rest = inputs[0].shape[1:]
    shape = tuple(int(d) for d in rest if d is not None) if None not in rest else _metadata_shape(model)
    return ServedArtifact(path, ONNX, inputs, outputs, _batch_dynamic(inputs, outputs), None, shape)


def _engine_io(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    if isinstance(meta.get("io"), dict):
        return meta["io"]
    source = Path(str(meta.get("source_onnx", "")))
    if source.is_file() and sha256_file(source) == meta.get("source_onnx_sha256"):
        return interface_record(load_onnx(source))
    raise BadInputError(f"{metadata_path(path)} records no inputs and outputs and the ONNX it was built from "
                        f"({source}) is gone or changed: rebuild the engine with `deploy build`")


def read_engine(path: Path) -> ServedArtifact:
    """The artifact facts of an engine, from its ``engine.plan.json`` record (the engine itself is not read)."""
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    meta = load_engine_metadata(path)
    if meta is None:
        raise BadInputError(f"{path} has no {metadata_path(path).name} beside it: convdeploy knows an engine's "
                            "TensorRT version and profile from that record; rebuild with `deploy build`")
    try:
        io = _engine_io(path, meta)
        inputs = tuple(_tensor(t) for t in io["inputs"])
        outputs = tuple(_tensor(t) for t in io["outputs"])
        profile = BatchProfile.from_dict(meta["profile"])
        versions = str(meta["tensorrt_version"]), str(meta["compute_capability"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"{metadata_path(path)} lacks {exc} or holds a wrong type: rebuild the engine with "
                            "`deploy build`") from None
    _check_single_input(path, inputs)
    dynamic = _batch_dynamic(inputs, outputs)
    return ServedArtifact(path, ENGINE, inputs, outputs, dynamic, profile.max[0] if dynamic else None,
                          tuple(profile.opt[1:]), versions[0], versions[1], meta.get("gpu_name"))


def read_artifact(path: str | Path) -> ServedArtifact:
    """``read_onnx`` or ``read_engine`` by the file's extension."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return read_onnx(p)
    if suffix in ENGINE_SUFFIXES:
        return read_engine(p)
    raise BadInputError(f"{p}: serve a model.onnx or an engine.plan (got {suffix or 'no extension'})")
