"""ONNX -> TensorRT engine (engine.plan) with one optimization profile over the batch axis.

TensorRT is imported lazily, only inside ``import_tensorrt()``: nothing else in the
project imports it, so every other command works where it is not installed. The GPU
part (``build_engine``) is kept small; everything around it — profile computation,
option validation, metadata, version/device compatibility, availability — is plain
Python tested on CPU.

Written against the TensorRT 10 Python API: ``Builder.create_network`` (explicit batch
is the only mode in TRT 10), ``OnnxParser`` with its error list, ``BuilderConfig`` with
``set_memory_pool_limit(MemoryPoolType.WORKSPACE, …)``, ``BuilderFlag.FP16``, one
``IOptimizationProfile`` with min/opt/max shapes, a timing cache, and
``build_serialized_network``.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from deploy.atomic import check_output_path, sha256_file, write_bytes_atomic, write_json_atomic
from deploy.errors import BackendUnavailableError, BadInputError

ENGINE_FORMAT = "convdeploy-engine/1"
ENGINE_SUFFIXES = (".plan", ".engine")
CPU_HINT = "`deploy bench model.onnx` runs on CPU"
MAX_WORKSPACE_GIB = 1024.0


# ---------------------------------------------------------------- availability

def import_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module (the project's only import of it)."""
    import tensorrt  # noqa: PLC0415  (lazy on purpose)

    return tensorrt


def tensorrt_available() -> tuple[bool, str]:
    """(True, "TensorRT x.y on <GPU>") or (False, what is missing). Never raises."""
    try:
        trt = import_tensorrt()
    except Exception as exc:  # ImportError, or a broken install raising OSError
        kind = "not installed" if isinstance(exc, ImportError) else f"not importable ({type(exc).__name__}: {exc})"
        return False, f"TensorRT is {kind} (pip install 'tensorrt>=10,<11' on a machine with an NVIDIA GPU)"
    try:
        version = str(trt.__version__)
        if int(version.split(".")[0]) < 10:
            return False, f"TensorRT {version} is too old: convdeploy needs TensorRT 10"
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        return True, f"TensorRT {version} on {torch.cuda.get_device_name(0)}"
    except Exception as exc:  # pragma: no cover - defensive: this function must not raise
        return False, f"TensorRT/CUDA check failed: {type(exc).__name__}: {exc}"


def require_tensorrt() -> Any:
    """Return the tensorrt module or raise BackendUnavailableError (exit 5) naming what is missing."""
    ok, reason = tensorrt_available()
    if not ok:
        raise BackendUnavailableError(f"{reason}; {CPU_HINT}")
    return import_tensorrt()


def running_environment() -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of this machine (GPU only)."""
    trt = require_tensorrt()
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"tensorrt_version": str(trt.__version__), "gpu_name": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}"}


# ---------------------------------------------------------------- ONNX input and profile

@dataclass(frozen=True)
class OnnxInput:
    """The single graph input of an ONNX model: name and dims (int, or None when symbolic)."""

    name: str
    dims: tuple[int | None, ...]


def onnx_input(path: str | Path) -> OnnxInput:
    """Read the (single) non-initializer graph input of ``path``."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p} does not exist: give the path of a model.onnx (deploy export … -o model.onnx)")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise BadInputError(f"{p} is not a readable ONNX model ({type(exc).__name__}): re-export it") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BadInputError(f"{p} has {len(inputs)} inputs; convdeploy handles single-input image models only")
    tensor = inputs[0].type.tensor_type
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tensor.shape.dim)
    return OnnxInput(name=inputs[0].name, dims=dims)


@dataclass(frozen=True)
class BatchProfile:
    """One TensorRT optimization profile: min/opt/max shapes that differ only in batch."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input_name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchProfile":
        return cls(input_name=d["input"], min=tuple(d["min"]), opt=tuple(d["opt"]), max=tuple(d["max"]))

    def admits(self, shape: Sequence[int]) -> bool:
        """Whether an input of ``shape`` lies inside [min, max]."""
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


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
    for label, v in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise BadInputError(f"{label} {v} must be a positive integer")
    fixed = inp.dims[0]
    if fixed is not None:
        asked = {v for v in (min_batch, opt_batch, max_batch) if v is not None}
        if asked - {fixed}:
            raise BadInputError(f"the ONNX input {inp.name!r} has a fixed batch of {fixed} but batches "
                                f"{sorted(asked)} were requested: re-export with a dynamic batch or drop "
                                "--min/--opt/--max-batch")
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
                                "fix --min-batch/--opt-batch/--max-batch")
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
        raise BadInputError(f"--workspace {workspace_gib} GiB is out of range: give a size in (0, {MAX_WORKSPACE_GIB:g}]")
    cache = Path(timing_cache) if timing_cache is not None else None
    if cache is not None:
        if cache.is_dir():
            raise BadInputError(f"--timing-cache {cache} is a directory: give a file name")
        if not cache.parent.is_dir():
            raise BadInputError(f"--timing-cache directory {cache.parent} does not exist: create it first")
    if fp16 and tf32:
        raise BadInputError("--fp16 and --tf32 are exclusive: pick one precision")
    for label, v in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch)):
        if v is not None and v < 1:
            raise BadInputError(f"{label} {v} must be a positive integer")
    return BuildOptions(src, dst, fp16, tf32, min_batch, opt_batch, max_batch, workspace_gib, cache)


# ---------------------------------------------------------------- metadata and compatibility

def metadata_path(engine_path: str | Path) -> Path:
    """``engine.plan`` -> ``engine.plan.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


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


def load_engine_metadata(engine_path: str | Path) -> dict[str, Any] | None:
    """Read engine.plan.json beside the engine; None when absent."""
    meta = metadata_path(engine_path)
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        raise BadInputError(f"{meta} is not valid JSON: rebuild the engine with `deploy build`") from None
    if not isinstance(data, dict) or data.get("format") != ENGINE_FORMAT:
        raise BadInputError(f"{meta} is not a convdeploy engine record: rebuild the engine with `deploy build`")
    return data


def check_engine_compat(meta: dict[str, Any], env: dict[str, Any]) -> list[str]:
    """Refuse an engine built for another TensorRT version or GPU architecture.

    An engine is tied to the exact TensorRT version and the compute capability it
    was built on (BadInputError, exit 2, with the rebuild command). A different GPU
    name with the same compute capability runs but may be slower: returned as a warning.
    """
    built = (meta.get("tensorrt_version"), str(meta.get("compute_capability")))
    here = (env.get("tensorrt_version"), str(env.get("compute_capability")))
    if built != here:
        raise BadInputError(
            f"engine was built with TensorRT {built[0]} for compute capability {built[1]} "
            f"({meta.get('gpu_name')}), this machine has TensorRT {here[0]} and {here[1]} "
            f"({env.get('gpu_name')}): rebuild it here with `deploy build {meta.get('source_onnx', 'model.onnx')} -o ENGINE.plan`")
    warnings = []
    if meta.get("gpu_name") != env.get("gpu_name"):
        warnings.append(f"engine was tuned on {meta.get('gpu_name')}, running on {env.get('gpu_name')}: "
                        "timings may be off; rebuild here for a fair number")
    return warnings


def check_batch_in_profile(meta: dict[str, Any] | None, batch: int) -> None:
    """BadInputError when ``batch`` lies outside the engine's profile."""
    if not meta or "profile" not in meta:
        return
    prof = BatchProfile.from_dict(meta["profile"])
    if not prof.min[0] <= batch <= prof.max[0]:
        raise BadInputError(f"--batch {batch} is outside the engine's profile [{prof.min[0]}, {prof.max[0]}]: "
                            f"rebuild with --opt-batch {batch} --max-batch {max(batch, prof.max[0])}")


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
    import time

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
                            "try a larger --workspace or run `deploy validate`")
    if opts.timing_cache is not None:
        write_bytes_atomic(opts.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    write_bytes_atomic(opts.engine_path, bytes(memoryview(serialized)))
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    meta = engine_metadata(opts, profile, env, sha256_file(opts.onnx_path), sha256_file(opts.engine_path),
                           outputs, build_s)
    write_json_atomic(metadata_path(opts.engine_path), meta)
    return meta


__all__ = [
    "BatchProfile", "BuildOptions", "OnnxInput", "build_engine", "check_batch_in_profile", "check_engine_compat",
    "compute_profile", "engine_metadata", "import_tensorrt", "load_engine_metadata", "metadata_path",
    "onnx_input", "require_tensorrt", "running_environment", "tensorrt_available", "validate_build_options",
]
