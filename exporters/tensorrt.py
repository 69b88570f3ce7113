"""ONNX -> TensorRT engine (engine.plan) with one optimization profile over the batch axis.

TensorRT is imported lazily, only inside ``validators.trt_env.import_tensorrt()``, so
every other command works where it is not installed. The GPU part (``build_engine``) is
kept small; everything around it — profile computation, option validation and metadata
here, availability and version/device compatibility in ``validators.trt_env`` — is plain
Python tested on CPU.

Written against the TensorRT 10 Python API: ``Builder.create_network`` (explicit batch
is the only mode in TRT 10), ``OnnxParser`` with its error list, ``BuilderConfig`` with
``set_memory_pool_limit(MemoryPoolType.WORKSPACE, …)``, ``BuilderFlag.FP16``, one
``IOptimizationProfile`` with min/opt/max shapes, a timing cache, and
``build_serialized_network``.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx

from deploy.atomic import check_output_path, sha256_file, write_bytes_atomic, write_json_atomic
from deploy.errors import BadInputError
from validators.trt_env import (
    ENGINE_FORMAT,
    ENGINE_SUFFIXES,
    BatchProfile,
    metadata_path,
    require_tensorrt,
    running_environment,
)

MAX_WORKSPACE_GIB = 1024.0


# ---------------------------------------------------------------- ONNX input and profile

@dataclass(frozen=True)
class OnnxInput:
    """The single graph input of an ONNX model: name and dims (int, or None when symbolic)."""

    name: str
    dims: tuple[int | None, ...]


def onnx_input(path: str | Path) -> OnnxInput:
    """Read the (single) non-initializer graph input of ``path``."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p} does not exist: give the path of a model.onnx (deploy export … -o model.onnx)")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise BadInputError(f"{p} is not a readable ONNX model ({type(exc).__name__}): re-export it") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BadInputError(f"{p} has {len(inputs)} inputs; convdeploy handles single-input image models only")
    tensor = inputs[0].type.tensor_type
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tensor.shape.dim)
    return OnnxInput(name=inputs[0].name, dims=dims)


def compute_profile(inp: OnnxInput, min_batch: int | None = None, opt_batch: int | None = None,
                    max_batch: int | None = None) -> BatchProfile:
    """Profile over the batch axis of ``inp``.

    Unset values: min 1; opt = max if only max is given; max = opt if only opt is
    given; both 1 if neither. A fixed-batch ONNX admits only its own batch.
    Non-batch dims must be fixed (export with a fixed input size).
    """
    if len(inp.dims) < 2:
        raise BadInputError(f"input {inp.name!r} has shape {inp.dims}: expected NCHW with a batch axis")
    rest = inp.dims[1:]
    if any(d is None for d in rest):
        raise BadInputError(f"input {inp.name!r} has dynamic non-batch dims {inp.dims}: "
                            "export with a fixed input size (only the batch may be dynamic)")
    for label, v in (("`min_batch`", min_batch), ("`opt_batch`", opt_batch), ("`max_batch`", max_batch)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise BadInputError(f"{label} {v} must be a positive integer")
    fixed = inp.dims[0]
    if fixed is not None:
        asked = {v for v in (min_batch, opt_batch, max_batch) if v is not None}
        if asked - {fixed}:
            raise BadInputError(f"the ONNX input {inp.name!r} has a fixed batch of {fixed} but batches "
                                f"{sorted(asked)} were requested: re-export with a dynamic batch or drop "
                                "`min_batch`/`opt_batch`/`max_batch`")
        lo = opt = hi = fixed
    else:
        lo = 1 if min_batch is None else int(min_batch)
        if opt_batch is None and max_batch is None:
            opt = hi = max(lo, 1)
        else:
            opt = int(opt_batch if opt_batch is not None else max_batch)  # type: ignore[arg-type]
            hi = int(max_batch if max_batch is not None else opt)
        if not lo <= opt <= hi:
            raise BadInputError(f"batch profile needs min <= opt <= max, got {lo} <= {opt} <= {hi}: "
                                "fix `min_batch`/`opt_batch`/`max_batch`")
    shape = tuple(int(d) for d in rest)  # type: ignore[arg-type]
    return BatchProfile(inp.name, (lo, *shape), (opt, *shape), (hi, *shape))


# ---------------------------------------------------------------- options

@dataclass(frozen=True)
class BuildOptions:
    """Validated options of ``deploy build`` / ``deploy export --engine``."""

    onnx_path: Path
    engine_path: Path
    fp16: bool = False
    tf32: bool = False
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_gib: float | None = None
    timing_cache: Path | None = None

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else ("tf32" if self.tf32 else "fp32")


def validate_build_options(onnx_path: str | Path, engine_path: str | Path, *, fp16: bool = False,
                           tf32: bool = False, min_batch: int | None = None, opt_batch: int | None = None,
                           max_batch: int | None = None, workspace_gib: float | None = None,
                           timing_cache: str | Path | None = None) -> BuildOptions:
    """Check paths and numbers before any GPU work (BadInputError, exit 2)."""
    src, dst = Path(onnx_path), Path(engine_path)
    if src.suffix.lower() != ".onnx":
        raise BadInputError(f"{src} is not an .onnx file: build engines from model.onnx (deploy export … -o model.onnx)")
    if not src.is_file():
        raise BadInputError(f"{src} does not exist: export it first with `deploy export MODEL.pt -o {src}`")
    if dst.suffix.lower() not in ENGINE_SUFFIXES:
        raise BadInputError(f"-o {dst}: an engine file must end in .plan (e.g. -o engine.plan)")
    check_output_path(dst)
    if workspace_gib is not None and not 0 < workspace_gib <= MAX_WORKSPACE_GIB:
        raise BadInputError(f"`workspace` {workspace_gib} GiB is out of range: give a size in (0, {MAX_WORKSPACE_GIB:g}]")
    cache = Path(timing_cache) if timing_cache is not None else None
    if cache is not None:
        if cache.is_dir():
            raise BadInputError(f"`timing_cache` {cache} is a directory: give a file name")
        if not cache.parent.is_dir():
            raise BadInputError(f"`timing_cache` directory {cache.parent} does not exist: create it first")
    if fp16 and tf32:
        raise BadInputError("`fp16` and `tf32` are exclusive: pick one precision")
    for label, v in (("`min_batch`", min_batch), ("`opt_batch`", opt_batch), ("`max_batch`", max_batch)):
        if v is not None and v < 1:
            raise BadInputError(f"{label} {v} must be a positive integer")
    return BuildOptions(src, dst, fp16, tf32, min_batch, opt_batch, max_batch, workspace_gib, cache)


# ---------------------------------------------------------------- metadata and compatibility

def engine_metadata(opts: BuildOptions, profile: BatchProfile, env: dict[str, Any], onnx_sha256: str,
                    engine_sha256: str, output_names: Sequence[str] = (), build_s: float | None = None) -> dict[str, Any]:
    """The engine.plan.json record: what the engine is tied to and how it was built."""
    return {
        "format": ENGINE_FORMAT,
        "tensorrt_version": env["tensorrt_version"],
        "gpu_name": env["gpu_name"],
        "compute_capability": env["compute_capability"],
        "precision": opts.precision,
        "profile": profile.to_dict(),
        "workspace_gib": opts.workspace_gib,
        "timing_cache": str(opts.timing_cache) if opts.timing_cache else None,
        "source_onnx": str(opts.onnx_path),
        "source_onnx_sha256": onnx_sha256,
        "engine_sha256": engine_sha256,
        "outputs": list(output_names),
        "build_seconds": build_s,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------- the GPU part

def _parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None:  # deprecated (and implied) in TRT 10; harmless to set
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else "unknown error"
        raise BadInputError(f"TensorRT's ONNX parser rejected {onnx_path} ({len(errors)} error(s); first: {first}): "
                            "run `deploy validate` for the graph check")
    return network, parser


def build_engine(opts: BuildOptions) -> dict[str, Any]:
    """Build ``opts.engine_path`` (+ ``.json``) from ``opts.onnx_path``; return the metadata."""
    profile = compute_profile(onnx_input(opts.onnx_path), opts.min_batch, opts.opt_batch, opts.max_batch)
    trt = require_tensorrt()
    env = running_environment()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_onnx(trt, builder, logger, opts.onnx_path)
    config = builder.create_builder_config()
    if opts.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * (1 << 30)))
    if opts.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None and not opts.tf32:  # TF32 is on by default on Ampere+; fp32 means fp32
        config.clear_flag(tf32_flag)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(profile.input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)
    cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if serialized is None:
        raise BadInputError(f"TensorRT could not build an engine from {opts.onnx_path} (see the log above): "
                            "try a larger `workspace` or run `deploy validate`")
    if opts.timing_cache is not None:
        write_bytes_atomic(opts.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    write_bytes_atomic(opts.engine_path, bytes(memoryview(serialized)))
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    meta = engine_metadata(opts, profile, env, sha256_file(opts.onnx_path), sha256_file(opts.engine_path),
                           outputs, build_s)
    write_json_atomic(metadata_path(opts.engine_path), meta)
    return meta
