"""What an artifact is and the input it is timed at: the kinds `deploy bench` times (model.onnx on
ONNX Runtime, engine.plan on TensorRT, a checkpoint on PyTorch) and their input shapes, read from
the file (the ONNX graph's input, the engine's profile) before any runtime starts.

Torch-free: `deploy bench x.onnx` starts without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from deploy.core.errors import BadInputError
from deploy.core.limits import check_input_elements
from validators.onnx_file import onnx_input
from validators.runtimes.tensorrt_env import ENGINE_SUFFIXES, BatchProfile, check_batch_in_profile, load_engine_metadata

#: --backend -> the artifact kind it runs
BACKENDS = {"ort": "onnx", "trt": "engine", "torch": "torch"}
KIND_FILES = {"onnx": "model.onnx", "engine": "engine.plan", "torch": "model.pt"}
#: files the PyTorch backend times
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pt2")



def artifact_kind(path: Path, backend: str = "auto") -> str:
    """"onnx", "engine" or "torch" (a checkpoint); BadInputError for a missing file, another
    extension, or a backend that does not run this kind of file."""
    suffix = path.suffix.lower()
    if backend != "auto" and backend not in BACKENDS:
        raise BadInputError(f"`backend` {backend}: choose auto, {', '.join(BACKENDS)}")
    if suffix == ".onnx":
        kind = "onnx"
    elif suffix in ENGINE_SUFFIXES:
        kind = "engine"
    elif suffix in CHECKPOINT_SUFFIXES:
        kind = "torch"
    else:
        raise BadInputError(f"{path}: benchmark a model.onnx, an engine.plan or a model.pt "
                            f"(got {suffix or 'no extension'})")
    if backend != "auto" and BACKENDS[backend] != kind:
        raise BadInputError(f"`backend` {backend} runs {KIND_FILES[BACKENDS[backend]]} files, not {path.name}: "
                            "give such a file or drop `backend`")
    if not path.is_file():
        raise BadInputError(f"{path} does not exist: create it with `deploy export` or `deploy build`")
    return kind


def onnx_bench_shape(path: Path, batch: int, input_size: Optional[tuple[int, int]]) -> tuple[int, ...]:
    """Input shape for ``path`` at ``batch``: dynamic batch set to it, spatial dims from the ONNX or ``input_size``
    (H, W)."""
    inp = onnx_input(path)
    dims = list(inp.dims)
    if len(dims) != 4:
        raise BadInputError(f"{path} input {inp.name!r} has shape {inp.dims}: expected NCHW")
    if dims[0] is not None and dims[0] != batch:
        raise BadInputError(f"{path} has a fixed batch of {dims[0]}: use `batch` {dims[0]} "
                            "or re-export with a dynamic batch")
    dims[0] = batch
    if dims[1] is None:
        raise BadInputError(f"{path} has a dynamic channel count: re-export with a fixed input shape")
    if input_size is not None:
        for axis, side in zip((2, 3), input_size):
            if dims[axis] is not None and dims[axis] != side:
                raise BadInputError(f"{path} has a fixed input size {dims[2]}x{dims[3]}: drop `input_size` "
                                    f"or re-export at {input_size[0]}x{input_size[1]}")
            dims[axis] = side
    if dims[2] is None or dims[3] is None:
        raise BadInputError(f"{path} has dynamic height/width: give `input_size`")
    shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    check_input_elements(shape)
    return shape


def engine_bench_shape(path: Path, batch: int, input_size: Optional[tuple[int, int]]) -> tuple[int, ...]:
    """Input shape for an engine, from engine.plan.json when present (checked before any GPU work)."""
    meta = load_engine_metadata(path)
    check_batch_in_profile(meta, batch)
    if meta is None:
        return ()  # unknown until the engine is loaded
    shape = (batch, *meta["profile"]["opt"][1:])
    check_input_elements(shape)
    if input_size is not None:
        shape = (batch, shape[1], *input_size)
        if not BatchProfile.from_dict(meta["profile"]).admits(shape):
            lo, hi = meta["profile"]["min"], meta["profile"]["max"]
            raise BadInputError(f"{path} was built for {lo[2]}x{lo[3]} to {hi[2]}x{hi[3]} inputs: drop `input_size` "
                                "or rebuild for that size")
    return tuple(int(d) for d in shape)
