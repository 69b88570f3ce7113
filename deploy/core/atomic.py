"""Atomic file writes, transactions of several files, output locks and artifact hashes
(docs/architecture.md "Writes": no half-written outputs; a pair is written both or neither)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from deploy.core.errors import BadInputError

#: how long a writer waits for another process writing the same output (``output_lock``)
LOCK_TIMEOUT_S = 600.0


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Fail early, before any work, with a usable message when ``path`` cannot be written.

    Besides the obvious checks it creates and removes one probe file in the directory:
    ``os.access`` says yes to root on read-only mounts.
    """
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise BadInputError(f"output path {out} is a directory: give a file name, e.g. {out / 'model.onnx'}")
    _refuse_special(out)
    if parent.exists() and not parent.is_dir():
        raise BadInputError(f"output directory {parent} is a file, not a directory: choose another output path")
    if not parent.is_dir():
        raise BadInputError(f"output directory {parent} does not exist: create it first or choose another output path")
    try:
        with tempfile.NamedTemporaryFile(prefix=f".{out.name}.", suffix=".probe", dir=parent):
            pass
    except OSError as exc:
        raise BadInputError(f"output directory {parent} is not writable ({exc.strerror or exc}): choose another "
                            "output path") from exc
    return out


def _refuse_special(out: Path) -> None:
    """An existing output must be a regular file: the rename into place would replace a device, a FIFO,
    a socket or a symlink (and what it points to would never see the bytes), so they are refused."""
    try:
        mode = os.lstat(out).st_mode
    except OSError:
        return  # a new name
    if stat.S_ISLNK(mode):
        raise BadInputError(f"output path {out} is a symbolic link: writing replaces the link itself, not what it "
                            "points to; give the real path")
    if not stat.S_ISREG(mode):
        raise BadInputError(f"output path {out} is not a regular file (a device, FIFO or socket): writing would "
                            "replace it; give the path of a regular file")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success (a
    one-file ``Transaction``: synced first, removed on failure, OS errors are exit 2)."""
    with Transaction() as txn:
        tmp = txn.reserve(path)
        yield tmp
        txn.seal(tmp)
        txn.commit()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with Transaction() as txn:
        txn.stage_bytes(path, data)
        txn.commit()
    return Path(path)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the indented JSON every report is written in."""
    return (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_bytes_atomic(path, json_bytes(obj))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- signals, the test hook, locks, transactions

class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt by the CLI's handler so that clean-ups run (exit 143)."""


#: the environment variable of the test hook (``point:action``, see ``run_hook``)
HOOK_ENV = "CONVDEPLOY_TEST_HOOK"


def run_hook(point: str) -> None:
    """A test hook at a named point of a run: ``CONVDEPLOY_TEST_HOOK=point:action`` with
    action ``term`` or ``int`` (send SIGTERM / SIGINT to this process) or ``sleep=SECONDS``.

    Points: each export step as it starts (``load``, ``fold``, ``export``, ``parity``,
    ``write`` …, from ``deploy.pipeline.export.StepLog``), ``transaction`` (a transaction starts),
    ``staged`` (every temporary file is written and synced) and ``between-renames`` (after
    the first rename of a commit). Used by the signal and concurrency tests; unset, it does
    nothing.
    """
    spec = os.environ.get(HOOK_ENV, "")
    name, _, action = spec.partition(":")
    if name != point:
        return
    if action in ("term", "int"):
        os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGINT)
    elif action.startswith("sleep="):
        time.sleep(float(action.removeprefix("sleep=")))


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the body runs (the renames of a commit: microseconds),
    then deliver them to the handlers that were installed before. Only the main thread can
    install handlers; elsewhere the body runs unprotected."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The advisory lock file of an output: ``.NAME.lock`` beside it."""
    out = Path(path)
    return out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str], timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the advisory lock (``fcntl.flock``) of the output ``path``: a second writer of the
    same output waits for the first to finish, up to ``timeout`` seconds, then fails (exit 2).

    The lock file is removed when released; a waiter that locked a file removed meanwhile
    (its inode is no longer the one at the path) opens the new one and tries again, so
    removing it is safe.
    """
    lock = lock_path(path)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock_until(fd, lock, path, deadline)
            if _same_inode(fd, lock):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _flock_until(fd: int, lock: Path, path: str | os.PathLike[str], deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise BadInputError(f"another convdeploy process is writing {path} (it holds {lock}): wait for it "
                                    "to finish or choose another output path") from None
            time.sleep(0.05)


def _same_inode(fd: int, lock: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(lock).st_ino
    except FileNotFoundError:
        return False


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Transaction:
    """Files written to temporary names beside their final paths, then renamed into place
    together (``commit``), or not at all.

    Every file is written and fsynced before the first rename; its sha256 is of the bytes
    written (computed from the temporary file, before any rename), so a report can record
    them. The renames run with SIGINT/SIGTERM held (``deferred_signals``); if one fails,
    the files already renamed are put back (the old ones were hard-linked aside first) or
    removed when there was none. Leaving the ``with`` block without ``commit`` removes every
    temporary file.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def __enter__(self) -> Transaction:
        run_hook("transaction")
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def reserve(self, final: str | os.PathLike[str]) -> Path:
        """A new empty temporary file beside ``final`` for the caller to write."""
        out = check_output_path(final)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        self._staged.append((Path(name), out))
        return Path(name)

    def adopt(self, written: Path, final: str | os.PathLike[str]) -> str:
        """Stage a file written elsewhere on the same file system (moved to a temporary name);
        returns its sha256."""
        tmp = self.reserve(final)
        os.replace(written, tmp)
        return self.seal(tmp)

    def stage_bytes(self, final: str | os.PathLike[str], data: bytes) -> str:
        """Stage ``data`` for ``final``; returns its sha256."""
        tmp = self.reserve(final)
        _translate_os_error(final, lambda: tmp.write_bytes(data))
        return self.seal(tmp)

    def seal(self, tmp: Path) -> str:
        """fsync a written temporary file, give it normal permissions, return its sha256."""
        def sync() -> None:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        final = next(f for t, f in self._staged if t == tmp)
        _translate_os_error(final, sync)
        return sha256_file(tmp)

    def commit(self) -> None:
        """Rename every staged file into place, in staging order (both or neither)."""
        run_hook("staged")
        backups: dict[Path, Path] = {}
        done: list[Path] = []
        with deferred_signals():
            try:
                for final in {f for _, f in self._staged if f.exists()}:
                    backup = _hard_link_aside(final)
                    if backup is not None:
                        backups[final] = backup
                for i, (tmp, final) in enumerate(self._staged):
                    if i == 1:
                        run_hook("between-renames")
                    os.replace(tmp, final)
                    done.append(final)
            except BaseException:
                for final in reversed(done):
                    if final in backups:
                        os.replace(backups.pop(final), final)
                    else:
                        final.unlink(missing_ok=True)
                raise
            finally:
                for backup in backups.values():
                    backup.unlink(missing_ok=True)
        for directory in {f.parent for _, f in self._staged}:
            _fsync_dir(directory)


def _hard_link_aside(final: Path) -> Path | None:
    """A second name for the file at ``final`` (None where the file system has no hard links)."""
    backup = final.with_name(f".{final.name}.{os.getpid()}.{time.monotonic_ns()}.old")
    try:
        os.link(final, backup)
    except OSError:
        return None
    return backup


def write_through(path: Path, data: bytes | memoryview, final: str | os.PathLike[str]) -> None:
    """Write ``data`` to the temporary ``path`` of ``final``; a full disk, a file-size limit or a
    read-only mount is exit 2, naming ``final``."""
    _translate_os_error(final, lambda: path.write_bytes(data))


def _translate_os_error(path: str | os.PathLike[str], write: Any) -> None:
    """Run ``write``; a full disk, a file-size limit or a read-only mount is bad input (exit 2)."""
    try:
        write()
    except OSError as exc:
        raise BadInputError(f"cannot write {path} ({exc.strerror or exc}): free some space or choose another "
                            "output path") from exc
