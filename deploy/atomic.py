"""Atomic file writes and artifact hashes (docs/architecture.md: no half-written outputs)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from deploy.errors import BadInputError


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Fail early, before any work, with a usable message when ``path`` cannot be written.

    Besides the obvious checks it creates and removes one probe file in the directory:
    ``os.access`` says yes to root on read-only mounts.
    """
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise BadInputError(f"output path {out} is a directory: give a file name, e.g. {out / 'model.onnx'}")
    if parent.exists() and not parent.is_dir():
        raise BadInputError(f"output directory {parent} is a file, not a directory: choose another -o path")
    if not parent.is_dir():
        raise BadInputError(f"output directory {parent} does not exist: create it first or choose another -o path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInputError(f"output directory {parent} is not writable ({exc.strerror or exc}): choose another -o path") from exc
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    out = check_output_path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written model is for others to read too
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
