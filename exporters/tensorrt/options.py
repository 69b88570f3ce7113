"""What an engine build is asked for, checked before any GPU work: the ONNX model, the engine and
timing-cache paths (guarded like every output), the precision, the workspace limit, and the
optimization profile over the batch axis (and a square input size where the ONNX has dynamic
height and width). Plain Python, tested on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.core.errors import BadInputError
from deploy.core.pathguard import guard_paths
from validators.onnx_file import OnnxInput
from validators.runtimes.tensorrt_env import ENGINE_SUFFIXES, BatchProfile, metadata_path

MAX_WORKSPACE_GIB = 1024.0


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


