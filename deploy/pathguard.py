"""The output-path guard: no output of a command may be one of its inputs or another output.

Every command lists what it reads and what it will write in one ``guard_paths`` call,
before any work (docs/architecture.md "Writes"). Two paths are the same file when their
resolved paths agree (symlinks followed, also for a file that does not exist yet: its
parent resolved, then its name) or when both exist with the same device and inode (a hard
link). A clash raises ``BadInputError`` (exit 2) and nothing is touched.

Labels are part of the one-line message: outputs are named by their Python parameter in
backticks (`` `report` ``, translated into the flag by the CLI), inputs by what they are
("the input checkpoint").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from deploy.atomic import check_output_path
from deploy.errors import BadInputError

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


def guard_paths(inputs: Mapping[str, PathArg], outputs: Mapping[str, PathArg]) -> dict[str, Path]:
    """Check every output (``label -> path``; ``None`` entries are skipped) before any work.

    Each output must be writable (``check_output_path``), must not be any input, and must
    not be another output. Returns the outputs as ``Path`` by label.
    """
    ins = [(label, Path(p)) for label, p in inputs.items() if p is not None]
    outs = [(label, Path(p)) for label, p in outputs.items() if p is not None]
    for i, (label, path) in enumerate(outs):
        for in_label, in_path in ins:
            if same_file(path, in_path):
                raise BadInputError(f"{label} {path} is {in_label} {in_path}: writing it would destroy the input; "
                                    "choose another output path")
        for other_label, other in outs[:i]:
            if same_file(path, other):
                raise BadInputError(f"{other_label} and {label} are the same file ({other} and {path}): "
                                    "give them different paths")
    for _, path in outs:
        check_output_path(path)
    return dict(outs)
