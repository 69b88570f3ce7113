"""The output-path guard: no output of a command may be one of its inputs or another output.

Every command lists what it reads and what it will write in one ``guard_paths`` call,
before any work (docs/architecture.md "Writes"). Two paths are the same file when their
resolved paths agree (symlinks followed, also for a file that does not exist yet: its
parent resolved, then its name) or when both exist with the same device and inode (a hard
link). An ONNX input brings its external-data files along as inputs, and the scratch names of
an output's writes (its lock, temporary files) may not be inputs. A clash raises
``BadInputError`` (exit 2) and nothing is touched.

Labels are part of the one-line message: outputs are named by their Python parameter in
backticks (`` `report` ``, translated into the flag by the CLI), inputs by what they are
("the input checkpoint").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator, Mapping

import onnx

from deploy.core.atomic import check_output_path, lock_path
from deploy.core.errors import BadInputError

PathArg = str | os.PathLike[str] | None


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) when the file exists)."""
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
    except OSError:
        return resolved, None
    return resolved, (st.st_dev, st.st_ino)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether writing ``a`` would write ``b``: one resolved path, or one device and inode."""
    (path_a, inode_a), (path_b, inode_b) = _identity(Path(a)), _identity(Path(b))
    return path_a == path_b or (inode_a is not None and inode_a == inode_b)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every stored tensor of a graph: initializers, Constant values, subgraphs' tensors."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def external_data_files(path: Path) -> list[Path]:
    """The external-data files an ONNX model at ``path`` reads (beside it); [] for anything that is not a
    readable ONNX file (its reader says why later). Only regular files are opened."""
    try:
        if path.suffix.lower() != ".onnx" or not stat.S_ISREG(os.stat(path).st_mode):
            return []
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file has no data files; loading it reports the error
        return []
    locations = {e.value for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    return [path.parent / location for location in sorted(locations)]


def _with_companions(inputs: Mapping[str, PathArg]) -> list[tuple[str, Path]]:
    """The inputs, each ONNX model followed by its external-data files."""
    found = []
    for label, p in inputs.items():
        if p is None:
            continue
        found.append((label, Path(p)))
        found += [(f"the external data of {label}", data) for data in external_data_files(Path(p))]
    return found


def _is_scratch_of(candidate: Path, output: Path) -> bool:
    """Whether ``candidate`` is a name the writes of ``output`` use: its lock, its temporary, probe and
    backup files (``deploy.core.atomic``) — removed or replaced while the output is written."""
    if not output.name or output.name in (".", ".."):  # no file name: check_output_path refuses it
        return False
    if same_file(candidate, lock_path(output)):
        return True
    name = candidate.name
    return (os.path.realpath(candidate.parent) == os.path.realpath(output.parent)
            and name.startswith(f".{output.name}.") and name.endswith((".tmp", ".probe", ".old")))


def _check_lock_path(output: Path) -> None:
    lock = lock_path(output)
    if os.path.lexists(lock) and not (lock.is_file() and not lock.is_symlink()):
        raise BadInputError(f"{lock}, the lock file of {output}, is not a regular file: remove it or choose another "
                            "output path")


def guard_paths(inputs: Mapping[str, PathArg], outputs: Mapping[str, PathArg]) -> dict[str, Path]:
    """Check every output (``label -> path``; ``None`` entries are skipped) before any work.

    Each output must be writable (``check_output_path``), must not be any input — nor the
    external data of an input ONNX model — must not be another output, and no input may be one
    of the scratch names its writes use (lock, temporary files). Returns the outputs as ``Path``
    by label.
    """
    ins = _with_companions(inputs)
    outs = [(label, Path(p)) for label, p in outputs.items() if p is not None]
    for i, (label, path) in enumerate(outs):
        for in_label, in_path in ins:
            if same_file(path, in_path):
                raise BadInputError(f"{label} {path} is {in_label} {in_path}: writing it would destroy the input; "
                                    "choose another output path")
            if _is_scratch_of(in_path, path):
                raise BadInputError(f"{in_label} {in_path} is a scratch file of {label} {path} (its lock or a "
                                    "temporary file), which writing it removes: rename the input or choose "
                                    "another output path")
        for other_label, other in outs[:i]:
            if same_file(path, other):
                raise BadInputError(f"{other_label} and {label} are the same file ({other} and {path}): "
                                    "give them different paths")
    for _, path in outs:
        check_output_path(path)
        _check_lock_path(path)
    return dict(outs)
