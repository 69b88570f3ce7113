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

TensorRT 10 and 11: ``exporters.tensorrt.options`` checks what is asked (paths, profile,
workspace), ``exporters.tensorrt.precision`` says which polygraphy options each major gets;
this module builds and writes ``engine.plan`` with its ``engine.plan.json`` record. TensorRT and
polygraphy are imported lazily, so every other command works without them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx

from deploy.core.atomic import Transaction, json_bytes, output_lock, sha256_file
from deploy.core.errors import BackendUnavailableError, BadInputError, first_line
from exporters.tensorrt.fp16_onnx import fp32_ops, write_fp16_onnx
from exporters.tensorrt.options import BuildOptions, compute_profile
from exporters.tensorrt.precision import (
    FP16_ONNX,
    FP32,
    INT8_QDQ,
    BuildFacts,
    config_options,
    fp16_parity_batches,
    network_options,
    precision_route,
)
from exporters.tensorrt.timing_cache import TimingCachePlan, plan_timing_cache, refused_note, save_timing_cache
from validators.onnx_file import load_onnx, onnx_input
from validators.onnx_summary import interface_record
from validators.qdq import has_qdq
from validators.runtimes.tensorrt_env import (
    ENGINE_FORMAT,
    BatchProfile,
    metadata_path,
    require_tensorrt,
    running_environment,
    tensorrt_major,
)

# ---------------------------------------------------------------- metadata

def onnx_facts(path: str | Path) -> tuple[list[str], str | None]:
    """The graph output names of an ONNX file (the engine's outputs keep them) and the preprocessing
    recipe it records (``convdeploy.preprocess``: the engine carries it on, for ``deploy eval``)."""
    model = onnx.load(str(path), load_external_data=False)
    recipe = next((p.value for p in model.metadata_props if p.key == "convdeploy.preprocess"), None)
    return [o.name for o in model.graph.output], recipe


def onnx_io(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The graph's inputs and outputs (name, dtype, shape; symbolic dims by name): the engine keeps them,
    and `deploy triton` writes a Triton config from them without TensorRT."""
    return interface_record(onnx.load(str(path), load_external_data=False))


def engine_metadata(opts: BuildOptions, profile: BatchProfile, env: dict[str, Any], onnx_sha256: str,
                    engine_sha256: str, output_names: Sequence[str] = (), build_s: float | None = None,
                    build: BuildFacts | None = None, preprocess: str | None = None,
                    io: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine.plan.json record: what the engine is tied to and how it was built (``io``: its inputs
    and outputs, ``onnx_io`` of the source)."""
    facts = build or BuildFacts(route=FP32)
    return {
        "format": ENGINE_FORMAT,
        "tensorrt_version": env["tensorrt_version"],
        "gpu_name": env["gpu_name"],
        "compute_capability": env["compute_capability"],
        "precision": "int8" if facts.route == INT8_QDQ else opts.precision,
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
        "preprocess": preprocess,
        **({"io": io} if io is not None else {}),
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
                           cache: TimingCachePlan, qdq: bool) -> tuple[bytes, bytes | None, bool]:
    """(engine bytes, timing cache bytes to save or None, whether TensorRT refused the cache)."""
    from polygraphy.exception import PolygraphyException  # noqa: PLC0415 - optional (the trt extra): engine builds only

    poly = _polygraphy()
    major = tensorrt_major(str(trt.__version__))
    held: dict[str, Any] = {"refused": False}

    def attach_cache(builder: Any, network: Any, config: Any) -> None:
        held.update(builder=builder, config=config)  # keep both alive: the cache is read after the build
        if cache.data:
            held["refused"] = not _offer_timing_cache(config, cache.data)

    network_loader = poly.NetworkFromOnnxPath(str(source), **network_options(major, qdq))
    config_loader = poly.PostprocessConfig(
        poly.CreateConfig(**config_options(major, opts, profile, trt.MemoryPoolType.WORKSPACE, qdq)), attach_cache)
    try:
        with _polygraphy_warnings_only():
            engine = poly.EngineBytesFromNetwork(network_loader, config_loader)()
    except PolygraphyException as exc:
        first = first_line(exc, 10_000)
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
    qdq = has_qdq(load_onnx(opts.onnx_path))
    if qdq and (opts.fp16 or opts.tf32):
        raise BadInputError(f"{opts.onnx_path} is an INT8 Q/DQ model: it builds in the precision its Q/DQ nodes say; "
                            "drop `fp16` and `tf32`")
    facts = BuildFacts(route=precision_route(tensorrt_major(str(trt.__version__)), opts.fp16, opts.tf32, qdq))
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
        engine, timing, refused = _build_with_polygraphy(trt, source, opts, profile, cache, qdq)
        build_s = time.perf_counter() - t0
    facts.notes += [refused_note(opts.timing_cache)] if refused else []
    if opts.timing_cache is not None and timing is not None:
        save_timing_cache(opts.timing_cache, timing, env)
    with output_lock(opts.engine_path), Transaction() as txn:  # the engine and its JSON: both or neither
        engine_sha = txn.stage_bytes(opts.engine_path, engine)
        outputs, recipe = onnx_facts(opts.onnx_path)
        meta = engine_metadata(opts, profile, env, sha256_file(opts.onnx_path), engine_sha, outputs, build_s, facts,
                               recipe, onnx_io(opts.onnx_path))
        txn.stage_bytes(metadata_path(opts.engine_path), json_bytes(meta))
        txn.commit()
    return meta
