"""Reading an ONNX file that may come from anywhere, bounded (README "Guarantees").

``load_onnx`` refuses what is not a regular file before reading a byte (a FIFO would block
the reader forever, a device never ends), opens without following the check-then-open race
(``O_NONBLOCK``, then ``fstat`` of the open file), refuses files above protobuf's 2 GiB
message limit, and never loads external weight data unless asked. ``declared_problems``
lists what a graph declares that no runtime could load: negative dimensions and
initializers that claim elements without holding their bytes, checked from the declarations
alone (nothing is allocated by their sizes).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx

from deploy.core.errors import BadInputError, first_line

#: protobuf cannot parse a message of 2 GiB or more (larger models keep their weights in external data)
MAX_PROTO_BYTES = 2**31 - 1


@dataclass(frozen=True)
class OnnxInput:
    """The single graph input of an ONNX model: name and dims (int, or None when symbolic)."""

    name: str
    dims: tuple[int | None, ...]


def require_regular_file(path: str | os.PathLike[str]) -> None:
    """BadInputError unless ``path`` is a regular file (``stat`` only: nothing is opened, so a FIFO never blocks)."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise BadInputError(f"{p}: no such file") from None
    except OSError as exc:
        raise BadInputError(f"{p} cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise BadInputError(f"{p} is a directory: point to a file")
    if not stat.S_ISREG(mode):
        raise BadInputError(f"{p} is not a regular file (a FIFO, device or socket): give a file")


def read_regular_file(path: str | os.PathLike[str], max_bytes: int = MAX_PROTO_BYTES) -> bytes:
    """The bytes of ``path``; BadInputError for a missing path, a directory, anything but a regular
    file (checked on the opened file, so a FIFO never blocks) or a file above ``max_bytes``."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadInputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise BadInputError(f"{p} is a directory: point to a .onnx file") from None
    except OSError as exc:
        raise BadInputError(f"{p} cannot be opened ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise BadInputError(f"{p} is a directory: point to a .onnx file")
        if not stat.S_ISREG(info.st_mode):
            raise BadInputError(f"{p} is not a regular file (a FIFO, device or socket): give a .onnx file")
        if info.st_size > max_bytes:
            raise BadInputError(f"{p} is {info.st_size / 2**30:.1f} GiB, above protobuf's 2 GiB limit: an ONNX "
                                "model that large keeps its weights in external data")
        os.set_blocking(fh.fileno(), True)
        return fh.read()


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse the ONNX file at ``path`` (external weight data is not loaded); BadInputError when it
    is no file (see ``read_regular_file``) or not an ONNX model."""
    data = read_regular_file(path)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, RuntimeWarning-like errors and friends
        text = first_line(exc, 200)
        raise BadInputError(f"{path} is not a readable ONNX model ({text}): re-export it") from None
    if not model.HasField("graph"):
        raise BadInputError(f"{path} is not an ONNX model (it holds no graph): re-export it")
    return model


def onnx_input(path: str | os.PathLike[str]) -> OnnxInput:
    """Read the (single) non-initializer graph input of ``path``."""
    model = load_onnx(path)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BadInputError(f"{path} has {len(inputs)} inputs; convdeploy handles single-input image models only")
    tensor = inputs[0].type.tensor_type
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tensor.shape.dim)
    return OnnxInput(name=inputs[0].name, dims=dims)


def _negative_dims(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    found = [f"tensor {t.name!r} {list(t.dims)}" for t in _stored_tensors(graph) if any(d < 0 for d in t.dims)]
    for kind, values in (("input", graph.input), ("output", graph.output), ("value", graph.value_info)):
        for v in values:
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim if d.HasField("dim_value")]
            if any(d < 0 for d in dims):
                found.append(f"{kind} {v.name!r} {dims}")
    return found


def _element_size(data_type: int) -> int:
    try:
        return max(onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize, 1)
    except (KeyError, ValueError, TypeError):
        return 1


def _held_elements(t: onnx.TensorProto, model_dir: Path | None) -> int | None:
    """How many elements ``t`` really holds (None: its external file, unknown here, is not checked)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in t.external_data}
        if model_dir is None:
            return None
        location = (model_dir / entries.get("location", "")).resolve()
        if not location.is_relative_to(model_dir.resolve()):
            raise BadInputError(f"initializer {t.name!r} points to {entries.get('location')!r}, outside the model's "
                                "folder: refused (external data must sit beside the model)")
        if not location.is_file():
            return 0
        offset, length = _external_int(t, entries, "offset"), _external_int(t, entries, "length")
        in_file = max(location.stat().st_size - offset, 0)  # what the file holds past the offset
        return (min(length, in_file) if length else in_file) // _element_size(t.data_type)
    if t.raw_data:
        return len(t.raw_data) // _element_size(t.data_type)
    fields = (t.float_data, t.int32_data, t.string_data, t.int64_data, t.double_data, t.uint64_data)
    held = max((len(f) for f in fields), default=0)
    if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        held //= 2
    return held


def _external_int(t: onnx.TensorProto, entries: dict[str, str], key: str) -> int:
    """An external-data ``offset`` or ``length`` (0 when absent); BadInputError when it is no count."""
    text = entries.get(key, "") or "0"
    if not text.isdigit():
        raise BadInputError(f"initializer {t.name!r} declares an external-data {key} of {text!r}, not a byte count: "
                            "the file is corrupt or hand-edited; re-export it")
    return int(text)


def count_text(n: int) -> str:
    """``43.2 G``, ``1.5 M``, ``812``: an element count for a message."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


def _stored_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Initializers and the tensors of Constant nodes: everything a file stores as data."""
    tensors = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            tensors.extend(a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return tensors


def missing_data(model: onnx.ModelProto, model_dir: Path | None = None) -> list[str]:
    """Stored tensors that declare more elements than they hold: ``'w' 16x3x30000x30000 (43.2 G
    elements, no data)``. Counted from the declarations, never allocated."""
    found = []
    for t in _stored_tensors(model.graph):
        declared = math.prod(int(d) for d in t.dims)
        held = _held_elements(t, model_dir)
        if held is not None and held < declared:
            found.append(f"{t.name!r} {'x'.join(map(str, t.dims))} ({count_text(declared)} elements, "
                         f"{'no data' if held == 0 else f'{held} held'})")
    return found


def check_declarations(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """BadInputError (exit 2) when ``model`` declares a negative dimension or an initializer
    without its data: no runtime loads such a file, and sizes derived from it would be false."""
    negative = _negative_dims(model)
    if negative:
        more = f" (+{len(negative) - 3} more)" if len(negative) > 3 else ""
        raise BadInputError(f"{path} declares a negative dimension: {'; '.join(negative[:3])}{more}: the file is "
                            "corrupt or hand-edited; re-export it")
    empty = missing_data(model, Path(path).parent)
    if empty:
        more = f" (+{len(empty) - 3} more)" if len(empty) > 3 else ""
        raise BadInputError(f"{path} declares weight tensor(s) without their data: {'; '.join(empty[:3])}{more}: "
                            "the file is truncated or not a usable model; re-export it")


def structural_problems(model: onnx.ModelProto) -> list[str]:
    """What makes ``model`` no well-formed graph by the ONNX spec's structural rules (the ONNX checker's,
    without its stricter demands on optional fields): an IR version or default-domain opset this onnx
    cannot read, a node reading a tensor not produced before it (a cycle, a node reading its own
    output, nodes out of topological order), a name produced twice, an output nothing produces."""
    problems = []
    if model.ir_version > onnx.IR_VERSION:
        problems.append(f"IR version {model.ir_version} is newer than this onnx reads ({onnx.IR_VERSION})")
    newest = onnx.defs.onnx_opset_version()
    problems += [f"opset {o.version} is newer than this onnx reads ({newest})" for o in model.opset_import
                 if o.domain in ("", "ai.onnx") and o.version > newest]
    graph = model.graph
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        label = node.name or node.op_type
        missing = [t for t in node.input if t and t not in known]
        if missing:
            problems.append(f"node {label!r} reads {missing[0]!r} before anything produces it (a cycle, or nodes "
                            "out of topological order)")
        twice = [t for t in node.output if t and t in known]
        if twice:
            problems.append(f"{twice[0]!r} is produced twice (node {label!r})")
        known.update(t for t in node.output if t)
    problems += [f"graph output {o.name!r} is produced by nothing" for o in graph.output if o.name not in known]
    return problems


def check_structure(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """BadInputError (exit 2) naming the first of ``structural_problems``."""
    problems = structural_problems(model)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadInputError(f"{path} is not a well-formed ONNX graph: {problems[0]}{more}; re-export it")
