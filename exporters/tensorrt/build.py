"""ONNX -> TensorRT engine (engine.plan) with one optimization profile over the batch axis
(and over a square input size where the ONNX has dynamic height and width).

The engine is built by polygraphy's TensorRT loaders (``polygraphy.backend.trt``):
``NetworkFromOnnxPath`` parses the ONNX, ``CreateConfig`` sets the profile, the workspace
pool limit and the precision, ``PostprocessConfig`` attaches the timing cache and
``EngineBytesFromNetwork`` builds. The project's own code keeps what polygraphy cannot
know: option validation, the profile over the batch axis, the precision route per
TensorRT major, the timing-cache safety of ``exporters.tensorrt.timing_cache``, atomic writes and
the ``engine.plan.json`` record; availability and the version / device compatibility gate
are in ``validators.runtimes.tensorrt_env``. All of it but ``build_engine`` is plain Python, tested on CPU.

TensorRT 10 and 11. TensorRT 11 networks are strongly typed and its builder has no fp16
switch (``BuilderFlag.FP16`` is gone): ``fp16`` there builds from an fp16 copy of the ONNX
(``exporters.tensorrt.fp16_onnx``, checked on ONNX Runtime first); TensorRT 10 sets the builder's
fp16 flag. ``precision_route``, ``network_options`` and ``config_options`` say exactly which
polygraphy options each major gets; tests/test_tensorrt_api.py checks every TensorRT name
they lead to (and every name this package reads itself) against both releases.
TensorRT and polygraphy are imported lazily, so every other command works without them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx

from deploy.core.atomic import Transaction, json_bytes, output_lock, sha256_file
from deploy.core.errors import BackendUnavailableError, BadInputError
from deploy.core.pathguard import guard_paths
from exporters.tensorrt.fp16_onnx import fp32_ops, write_fp16_onnx
from exporters.tensorrt.timing_cache import TimingCachePlan, plan_timing_cache, refused_note, save_timing_cache
from validators.onnx_file import OnnxInput, onnx_input
from validators.runtimes.tensorrt_env import (
    ENGINE_FORMAT,
    ENGINE_SUFFIXES,
    BatchProfile,
    metadata_path,
    require_tensorrt,
    running_environment,
    tensorrt_major,
)

MAX_WORKSPACE_GIB = 1024.0


# ---------------------------------------------------------------- ONNX input and profile

def _axis_range(axis: str, names: str, fixed: int | None, lo: int | None, opt: int | None, hi: int | None,
                default_min: int | None) -> tuple[int, int, int]:
    """(min, opt, max) of one profile axis. A fixed dim admits only itself. Unset values: min
    ``default_min`` (else opt); opt = max if only max is given; max = opt if only opt is given."""
    for label, v in zip(names.split("/"), (lo, opt, hi)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise BadInputError(f"{label} {v} must be a positive integer")
    if fixed is not None:
        asked = {v for v in (lo, opt, hi) if v is not None}
        if asked - {fixed}:
            raise BadInputError(f"the ONNX input has a fixed {axis} of {fixed} but {sorted(asked)} was requested: "
                                f"re-export with a dynamic {axis} or drop {names}")
        return fixed, fixed, fixed
    if opt is None and hi is None:
        if lo is None and default_min is None:
            raise BadInputError(f"the ONNX input has a dynamic {axis}: give {names} (or export with a fixed {axis})")
        low = int(lo if lo is not None else default_min)  # type: ignore[arg-type]
        return low, low, low
    o = int(opt if opt is not None else hi)  # type: ignore[arg-type]
    h = int(hi if hi is not None else o)
    low = int(lo) if lo is not None else (default_min if default_min is not None else o)
    if not low <= o <= h:
        raise BadInputError(f"{axis} profile needs min <= opt <= max, got {low} <= {o} <= {h}: fix {names}")
    return low, o, h


def compute_profile(inp: OnnxInput, min_batch: int | None = None, opt_batch: int | None = None,
                    max_batch: int | None = None, min_size: int | None = None, opt_size: int | None = None,
                    max_size: int | None = None) -> BatchProfile:
    """The optimization profile of ``inp`` (NCHW): over the batch axis and, where the ONNX has
    dynamic height and width, over a square input size.

    Batch: unset min is 1; opt = max if only max is given; max = opt if only opt is given;
    all 1 if none. Size (dynamic H/W only): the same rules, min defaulting to opt. A fixed
    axis admits only its own value. The channel count must be fixed.
    """
    if len(inp.dims) != 4 or inp.dims[1] is None:
        raise BadInputError(f"input {inp.name!r} has shape {inp.dims}: expected NCHW with fixed channels "
                            "(dynamic non-batch dims other than height/width are not supported)")
    batch = _axis_range("batch", "`min_batch`/`opt_batch`/`max_batch`", inp.dims[0], min_batch, opt_batch, max_batch, 1)
    sizes = [_axis_range("input size", "`min_size`/`opt_size`/`max_size`", d, min_size, opt_size, max_size, None)
             for d in inp.dims[2:]]
    channels = int(inp.dims[1])
    return BatchProfile(inp.name, *((batch[i], channels, sizes[0][i], sizes[1][i]) for i in range(3)))


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
    min_size: int | None = None
    opt_size: int | None = None
    max_size: int | None = None

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else ("tf32" if self.tf32 else "fp32")


def validate_build_options(onnx_path: str | Path, engine_path: str | Path, *, fp16: bool = False,
                           tf32: bool = False, min_batch: int | None = None, opt_batch: int | None = None,
                           max_batch: int | None = None, workspace_gib: float | None = None,
                           timing_cache: str | Path | None = None, min_size: int | None = None,
                           opt_size: int | None = None, max_size: int | None = None) -> BuildOptions:
    """Check paths and numbers before any GPU work (BadInputError, exit 2)."""
    src, dst = Path(onnx_path), Path(engine_path)
    if src.suffix.lower() != ".onnx":
        raise BadInputError(f"{src} is not an .onnx file: build engines from model.onnx (deploy export … -o model.onnx)")
    if not src.is_file():
        raise BadInputError(f"{src} does not exist: export it first with `deploy export MODEL.pt -o {src}`")
    if dst.suffix.lower() not in ENGINE_SUFFIXES:
        raise BadInputError(f"-o {dst}: an engine file must end in .plan (e.g. -o engine.plan)")
    if workspace_gib is not None and not 0 < workspace_gib <= MAX_WORKSPACE_GIB:
        raise BadInputError(f"`workspace` {workspace_gib} GiB is out of range: give a size in (0, {MAX_WORKSPACE_GIB:g}]")
    cache = Path(timing_cache) if timing_cache is not None else None
    if cache is not None:
        if cache.is_dir():
            raise BadInputError(f"`timing_cache` {cache} is a directory: give a file name")
        if not cache.parent.is_dir():
            raise BadInputError(f"`timing_cache` directory {cache.parent} does not exist: create it first")
    guard_paths(inputs={"the ONNX model": src},
                outputs={"the engine": dst, "the engine metadata": metadata_path(dst), "`timing_cache`": cache})
    if fp16 and tf32:
        raise BadInputError("`fp16` and `tf32` are exclusive: pick one precision")
    for label, v in (("`min_batch`", min_batch), ("`opt_batch`", opt_batch), ("`max_batch`", max_batch),
                     ("`min_size`", min_size), ("`opt_size`", opt_size), ("`max_size`", max_size)):
        if v is not None and v < 1:
            raise BadInputError(f"{label} {v} must be a positive integer")
    return BuildOptions(src, dst, fp16, tf32, min_batch, opt_batch, max_batch, workspace_gib, cache,
                        min_size, opt_size, max_size)


# ---------------------------------------------------------------- precision per TensorRT major

FP32, TF32, FP16_FLAG, FP16_ONNX = "fp32", "tf32", "fp16 (builder flag)", "fp16 (fp16 ONNX, strongly typed)"


@dataclass
class BuildFacts:
    """How a build went, for engine.plan.json: the precision route, the fp16 graph's check, one-line notes."""

    route: str
    fp16_check: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def precision_route(major: int, fp16: bool, tf32: bool = False) -> str:
    """How the requested precision is built on TensorRT ``major``.

    fp16 on TensorRT 10: the builder's fp16 flag (TensorRT picks fp16 kernels where they
    are faster); on 11, which has no such flag, an fp16 ONNX with fp32 I/O and fp32 gates,
    built strongly typed. tf32 is a builder flag on both.
    """
    if fp16:
        return FP16_FLAG if major < 11 else FP16_ONNX
    return TF32 if tf32 else FP32


def network_options(major: int) -> dict[str, Any]:
    """Keywords of polygraphy's ``NetworkFromOnnxPath``: TensorRT 11 networks are strongly typed."""
    return {"strongly_typed": True} if major >= 11 else {}


def config_options(major: int, opts: BuildOptions, profile: BatchProfile, workspace_pool: Any) -> dict[str, Any]:
    """Keywords of polygraphy's ``CreateConfig``; ``workspace_pool`` is ``trt.MemoryPoolType.WORKSPACE``."""
    from polygraphy.backend.trt import Profile  # noqa: PLC0415 - optional (the trt extra): only engine builds need it

    route = precision_route(major, opts.fp16, opts.tf32)
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


# ---------------------------------------------------------------- metadata

def onnx_outputs(path: str | Path) -> list[str]:
    """The graph output names of an ONNX file (the engine's outputs keep them)."""
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def engine_metadata(opts: BuildOptions, profile: BatchProfile, env: dict[str, Any], onnx_sha256: str,
                    engine_sha256: str, output_names: Sequence[str] = (), build_s: float | None = None,
                    build: BuildFacts | None = None) -> dict[str, Any]:
    """The engine.plan.json record: what the engine is tied to and how it was built."""
    facts = build or BuildFacts(route=FP32)
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
        "precision_route": facts.route,
        "fp16_onnx_check": facts.fp16_check,
        "notes": list(facts.notes),
    }


# ---------------------------------------------------------------- the GPU part

def _polygraphy() -> Any:
    try:
        from polygraphy.backend import trt as poly  # noqa: PLC0415 - optional (the trt extra): only engine builds need it
    except ImportError:
        raise BackendUnavailableError("polygraphy is not installed: pip install 'polygraphy>=0.53' "
                                      "(part of the trt extra) to build TensorRT engines") from None
    return poly


@contextlib.contextmanager
def _polygraphy_warnings_only() -> Iterator[None]:
    """Show TensorRT's and polygraphy's warnings and errors during a build, not their progress chatter."""
    from polygraphy.logger import G_LOGGER  # noqa: PLC0415 - optional (the trt extra): only engine builds need it

    G_LOGGER.colors = False
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        yield


def _offer_timing_cache(config: Any, data: bytes) -> bool:
    """Attach ``data`` as the config's timing cache; on a refusal attach an empty one. True when accepted."""
    try:
        offered = config.create_timing_cache(data)
    except Exception:  # noqa: BLE001 - TensorRT raises RuntimeError/TypeError for a blob it cannot read
        offered = None
    if offered is not None and config.set_timing_cache(offered, ignore_mismatch=False):
        return True
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return False


def _build_with_polygraphy(trt: Any, source: Path, opts: BuildOptions, profile: BatchProfile,
                           cache: TimingCachePlan) -> tuple[bytes, bytes | None, bool]:
    """(engine bytes, timing cache bytes to save or None, whether TensorRT refused the cache)."""
    from polygraphy.exception import PolygraphyException  # noqa: PLC0415 - optional (the trt extra): engine builds only

    poly = _polygraphy()
    major = tensorrt_major(str(trt.__version__))
    held: dict[str, Any] = {"refused": False}

    def attach_cache(builder: Any, network: Any, config: Any) -> None:
        held.update(builder=builder, config=config)  # keep both alive: the cache is read after the build
        if cache.data:
            held["refused"] = not _offer_timing_cache(config, cache.data)

    network_loader = poly.NetworkFromOnnxPath(str(source), **network_options(major))
    config_loader = poly.PostprocessConfig(
        poly.CreateConfig(**config_options(major, opts, profile, trt.MemoryPoolType.WORKSPACE)), attach_cache)
    try:
        with _polygraphy_warnings_only():
            engine = poly.EngineBytesFromNetwork(network_loader, config_loader)()
    except PolygraphyException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"TensorRT could not build an engine from {opts.onnx_path} ({first}; see the log above): "
                            "try a larger `workspace` or run `deploy validate`") from None
    config = held["config"]
    timing = config.get_timing_cache() if cache.saves else None
    saved = bytes(memoryview(timing.serialize())) if timing is not None else None
    return bytes(memoryview(engine)), saved, bool(held["refused"])


def require_engine_builder(fp16: bool = False) -> Any:
    """Everything a build needs, checked before any work (exit 5 naming what is missing): TensorRT
    and a GPU, polygraphy, and for fp16 on TensorRT 11 the fp16 converter. Returns tensorrt."""
    trt = require_tensorrt()
    _polygraphy()
    if precision_route(tensorrt_major(str(trt.__version__)), fp16) == FP16_ONNX:
        fp32_ops()  # imports onnxconverter-common
    return trt


def engine_builder_available() -> tuple[bool, str]:
    """(True, "TensorRT x.y on <GPU>") when an fp32 engine can be built here, else (False, why). Never raises."""
    try:
        trt = require_engine_builder()
    except BackendUnavailableError as exc:
        return False, str(exc).split("; ")[0]
    return True, f"TensorRT {trt.__version__} on {running_environment()['gpu_name']}"


def build_engine(opts: BuildOptions) -> dict[str, Any]:
    """Build ``opts.engine_path`` (+ ``.json``) from ``opts.onnx_path``; return the metadata.

    A timing cache that does not match is reported in the record's ``notes`` (one line
    each) and replaced, never fatal. The engine, its record and the cache are each written
    atomically, the engine's record last.
    """
    profile = compute_profile(onnx_input(opts.onnx_path), opts.min_batch, opts.opt_batch, opts.max_batch,
                              opts.min_size, opts.opt_size, opts.max_size)
    trt = require_engine_builder(opts.fp16)
    env = running_environment()
    facts = BuildFacts(route=precision_route(tensorrt_major(str(trt.__version__)), opts.fp16, opts.tf32))
    cache = plan_timing_cache(opts.timing_cache, env)
    facts.notes += [cache.note] if cache.note else []
    with tempfile.TemporaryDirectory(prefix=".convdeploy-", dir=opts.engine_path.parent) as tmp:
        source = opts.onnx_path
        if facts.route == FP16_ONNX:
            source = Path(tmp) / "model.fp16.onnx"
            check = write_fp16_onnx(opts.onnx_path, source, profile.opt[1:], fp16_parity_batches(profile))
            facts.fp16_check = {"parity": check.summary(), "top1_excluded": check.candidates[0].top1_excluded,
                                "max_rel_err": check.candidates[0].max_rel_err, "fp32_ops": list(fp32_ops())}
        t0 = time.perf_counter()
        engine, timing, refused = _build_with_polygraphy(trt, source, opts, profile, cache)
        build_s = time.perf_counter() - t0
    facts.notes += [refused_note(opts.timing_cache)] if refused else []
    if opts.timing_cache is not None and timing is not None:
        save_timing_cache(opts.timing_cache, timing, env)
    with output_lock(opts.engine_path), Transaction() as txn:  # the engine and its JSON: both or neither
        engine_sha = txn.stage_bytes(opts.engine_path, engine)
        meta = engine_metadata(opts, profile, env, sha256_file(opts.onnx_path), engine_sha,
                               onnx_outputs(opts.onnx_path), build_s, facts)
        txn.stage_bytes(metadata_path(opts.engine_path), json_bytes(meta))
        txn.commit()
    return meta
