"""The precision route per TensorRT major: which polygraphy network and config options a build gets.

TensorRT 11 networks are strongly typed and its builder has no fp16 switch (``BuilderFlag.FP16``
is gone): ``fp16`` there builds from an fp16 copy of the ONNX (``exporters.tensorrt.fp16_onnx``,
checked on ONNX Runtime first); TensorRT 10 sets the builder's fp16 flag. An INT8 ONNX with explicit
QuantizeLinear/DequantizeLinear (`deploy quantize`) builds strongly typed on both majors, with no
precision flag: the Q/DQ nodes say where int8 runs (TensorRT's guide to explicit quantization asks
for strong typing and no precision flags; TensorRT 11 has no INT8 flag at all). tests/tensorrt/test_tensorrt_api.py
checks every TensorRT name these lead to against both releases. Plain Python, tested on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporters.tensorrt.options import BuildOptions
from validators.runtimes.tensorrt_env import BatchProfile

FP32, TF32, FP16_FLAG, FP16_ONNX = "fp32", "tf32", "fp16 (builder flag)", "fp16 (fp16 ONNX, strongly typed)"
INT8_QDQ = "int8 (explicit Q/DQ, strongly typed)"


@dataclass
class BuildFacts:
    """How a build went, for engine.plan.json: the precision route, the fp16 graph's check, one-line notes."""

    route: str
    fp16_check: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def precision_route(major: int, fp16: bool, tf32: bool = False, qdq: bool = False) -> str:
    """How the requested precision is built on TensorRT ``major``.

    fp16 on TensorRT 10: the builder's fp16 flag (TensorRT picks fp16 kernels where they
    are faster); on 11, which has no such flag, an fp16 ONNX with fp32 I/O and fp32 gates,
    built strongly typed. tf32 is a builder flag on both. A Q/DQ graph (``qdq``): int8 where
    its Q/DQ nodes say, strongly typed, on both.
    """
    if qdq:
        return INT8_QDQ
    if fp16:
        return FP16_FLAG if major < 11 else FP16_ONNX
    return TF32 if tf32 else FP32


def network_options(major: int, qdq: bool = False) -> dict[str, Any]:
    """Keywords of polygraphy's ``NetworkFromOnnxPath``: TensorRT 11 networks, and Q/DQ networks on 10, are
    strongly typed."""
    return {"strongly_typed": True} if major >= 11 or qdq else {}


def config_options(major: int, opts: BuildOptions, profile: BatchProfile, workspace_pool: Any,
                   qdq: bool = False) -> dict[str, Any]:
    """Keywords of polygraphy's ``CreateConfig``; ``workspace_pool`` is ``trt.MemoryPoolType.WORKSPACE``."""
    from polygraphy.backend.trt import Profile  # noqa: PLC0415 - optional (the trt extra): only engine builds need it

    route = precision_route(major, opts.fp16, opts.tf32, qdq)
    kwargs: dict[str, Any] = {
        "profiles": [Profile().add(profile.input_name, profile.min, profile.opt, profile.max)],
        "tf32": route == TF32,  # False clears the flag: TF32 is on by default on Ampere+, and fp32 means fp32
    }
    if route == FP16_FLAG:
        kwargs["fp16"] = True
    if opts.workspace_gib is not None:
        kwargs["memory_pool_limits"] = {workspace_pool: int(opts.workspace_gib * (1 << 30))}
    return kwargs


def fp16_parity_batches(profile: BatchProfile) -> tuple[int, ...]:
    """Batches the fp16 ONNX is checked at on ONNX Runtime: the profile's smallest and one more (at most 4)."""
    return tuple(sorted({profile.min[0], min(profile.max[0], max(profile.min[0], 4))}))


