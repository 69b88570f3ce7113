"""Triton's model configuration (``config.pbtxt``) as typed records, written as protobuf text.

The records hold exactly the ``ModelConfig`` fields convdeploy writes (docs/serving.md); ``to_pbtxt``
renders them in the text format Triton reads. ``deploy.serving.schema`` parses the text back
into Triton's own ``ModelConfig`` message, so a field we misspell is an error, not a silent default.
Plain Python: no protobuf import here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from deploy.core.errors import BadInputError

#: numpy dtype names -> Triton's DataType
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}


def triton_dtype(name: str, tensor: str) -> str:
    """``float32`` -> ``TYPE_FP32``; BadInputError for a dtype Triton has no type for."""
    if name not in TRITON_DTYPES:
        raise BadInputError(f"tensor {tensor!r} has dtype {name}, which Triton cannot serve: re-export with "
                            "float32 inputs and outputs")
    return TRITON_DTYPES[name]


@dataclass(frozen=True)
class TensorConfig:
    """One input or output: name, Triton data type and dims (without the batch axis when batching; -1 dynamic)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class DynamicBatching:
    """``dynamic_batching``: the batch sizes the scheduler prefers and how long it waits to form them."""

    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0


@dataclass(frozen=True)
class Warmup:
    """``model_warmup``: one sample of random data per input at the real input shape (dims without batch)."""

    name: str
    batch_size: int
    inputs: tuple[TensorConfig, ...]


@dataclass(frozen=True)
class OrtTensorRT:
    """ONNX Runtime's TensorRT execution provider for an ``onnxruntime_onnx`` model on a GPU."""

    precision_mode: str = "FP32"  # FP32 or FP16


@dataclass(frozen=True)
class ModelConfig:
    """The fields of Triton's ``ModelConfig`` that convdeploy writes."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    platform: str | None = None  # onnxruntime_onnx, tensorrt_plan
    backend: str | None = None  # python (deploy serve)
    instance_count: int = 1
    instance_kind: str = "KIND_GPU"
    dynamic_batching: DynamicBatching | None = None
    warmup: Warmup | None = None
    ort_tensorrt: OrtTensorRT | None = None
    cc_model_filenames: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    comments: tuple[str, ...] = ()

    def to_pbtxt(self) -> str:
        """The configuration as protobuf text (``config.pbtxt``); ``comments`` lead it as ``#`` lines."""
        lines = [f"# {c}" for c in self.comments]
        lines.append(f"name: {_q(self.name)}")
        if self.platform:
            lines.append(f"platform: {_q(self.platform)}")
        if self.backend:
            lines.append(f"backend: {_q(self.backend)}")
        lines.append(f"max_batch_size: {self.max_batch_size}")
        lines += _tensors("input", self.inputs) + _tensors("output", self.outputs)
        lines.append(f"instance_group [ {{ count: {self.instance_count} kind: {self.instance_kind} }} ]")
        if self.dynamic_batching is not None:
            lines += _dynamic_batching(self.dynamic_batching)
        for cc, filename in sorted(self.cc_model_filenames.items()):
            lines.append(f"cc_model_filenames {{ key: {_q(cc)} value: {_q(filename)} }}")
        if self.ort_tensorrt is not None:
            lines += _ort_tensorrt(self.ort_tensorrt)
        if self.warmup is not None:
            lines += _warmup(self.warmup)
        for key, value in sorted(self.parameters.items()):
            lines.append(f"parameters {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}")
        return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """A protobuf text string literal (JSON's escapes are a subset protobuf's text format reads)."""
    return json.dumps(text)


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensors(kind: str, tensors: tuple[TensorConfig, ...]) -> list[str]:
    body = ",\n".join(f"  {{ name: {_q(t.name)} data_type: {t.data_type} dims: {_dims(t.dims)} }}" for t in tensors)
    return [f"{kind} [", body, "]"]


def _dynamic_batching(db: DynamicBatching) -> list[str]:
    inner = []
    if db.preferred_batch_size:
        inner.append(f"  preferred_batch_size: {_dims(db.preferred_batch_size)}")
    inner.append(f"  max_queue_delay_microseconds: {db.max_queue_delay_microseconds}")
    return ["dynamic_batching {", *inner, "}"]


def _ort_tensorrt(accelerator: OrtTensorRT) -> list[str]:
    return ["optimization { execution_accelerators { gpu_execution_accelerator: [ {",
            '  name: "tensorrt"',
            f'  parameters {{ key: "precision_mode" value: {_q(accelerator.precision_mode)} }}',
            "} ] } }"]


def _warmup(w: Warmup) -> list[str]:
    inputs = "\n".join(f"    inputs {{ key: {_q(t.name)} value: {{ data_type: {t.data_type} dims: {_dims(t.dims)} "
                       "random_data: true } }" for t in w.inputs)
    return ["model_warmup [ {", f"    name: {_q(w.name)}", f"    batch_size: {w.batch_size}", inputs, "} ]"]
