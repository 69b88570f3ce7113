"""What a hostile user found the output guard missing (deploy/core/pathguard.py, deploy/core/atomic.py).

Outputs are regular files or new names: a device, FIFO, socket or symlink at an output path is
refused, exit 2, untouched (the temporary-file-and-rename write would replace it). Every input
is known: an ONNX model's external-data files, the `--model-class` module's source, and the
scratch names of an output's writes (its lock, temporary files) — an input there was deleted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import sys
from pathlib import Path

import onnx
import pytest


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["fifo", "socket", "symlink-to-file", "symlink-to-stdout", "char-device"])
def test_special_files_are_never_replaced(kind, model_files, deploy_cli) -> None:
    target = model_files / "out.json"
    listener = None
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "socket":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(target))
    elif kind == "symlink-to-file":
        (model_files / "real.json").write_text("{}\n")
        target.symlink_to(model_files / "real.json")
    elif kind == "symlink-to-stdout":
        target.symlink_to("/proc/self/fd/1")
    else:
        target = Path("/dev/null")
    before = os.lstat(target)
    for args in (("bench", model_files / "m.onnx", "--iters", 2, "--warmup", 0, "--json-file", target),
                 ("inspect", model_files / "m.onnx", "--json-file", target),
                 ("export", model_files / "m.pt", "-o", model_files / "x.onnx", "--report", target),
                 ("validate", model_files / "m.pt", model_files / "m.onnx", "--samples", 1, "--report", target)):
        run = deploy_cli(*args)
        assert run.exit_code == 2, (args, run.stderr)
        assert "not a regular file" in run.one_error_line() or "symbolic link" in run.one_error_line()
    after = os.lstat(target)
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode), before.st_ino)
    assert not (model_files / "x.onnx").exists()
    if kind == "symlink-to-file":
        assert (model_files / "real.json").read_text() == "{}\n"
    if listener is not None:
        listener.close()
        target.unlink()


def test_external_data_of_an_onnx_input_is_an_input(model_files, deploy_cli) -> None:
    model = onnx.load(str(model_files / "m.onnx"))
    onnx.save(model, str(model_files / "big.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="big.onnx.data", size_threshold=1024)
    data = model_files / "big.onnx.data"
    before = _digest(data)
    for args in (("bench", model_files / "big.onnx", "--iters", 2, "--warmup", 0, "--json-file", data),
                 ("inspect", model_files / "big.onnx", "--json-file", data),
                 ("validate", model_files / "m.pt", model_files / "big.onnx", "--report", data)):
        run = deploy_cli(*args)
        assert run.exit_code == 2, (args, run.stderr)
        assert "the external data of" in run.one_error_line() and "would destroy the input" in run.one_error_line()
    assert _digest(data) == before
    run = deploy_cli("bench", model_files / "big.onnx", "--iters", 2, "--warmup", 0)
    assert run.exit_code == 0, run.stderr  # the weights are still there


def test_model_class_source_is_an_input(model_files, deploy_cli, monkeypatch) -> None:
    import torch

    source = model_files / "rtmodels.py"
    source.write_text("import torch\nfrom torch import nn\n\n\nclass Net(nn.Sequential):\n"
                      "    def __init__(self):\n        super().__init__(nn.Conv2d(3, 4, 3), nn.Flatten())\n")
    monkeypatch.chdir(model_files)
    monkeypatch.syspath_prepend(str(model_files))
    from rtmodels import Net  # type: ignore[import-not-found]

    torch.save(Net().state_dict(), model_files / "sd.pt")
    before = _digest(source)
    run = deploy_cli("export", "sd.pt", "--model-class", "rtmodels:Net", "--input-shape", "3x8x8", "-o", "n.onnx",
                     "--report", "rtmodels.py")
    assert run.exit_code == 2 and "the --model-class module" in run.one_error_line(), run.stderr
    assert _digest(source) == before and not (model_files / "n.onnx").exists()
    sys.modules.pop("rtmodels", None)


def test_lock_and_temporary_names_are_not_inputs(model_files, deploy_cli) -> None:
    lock_named = model_files / ".x.onnx.lock"
    shutil.copy(model_files / "m.pt", lock_named)
    before = _digest(lock_named)
    run = deploy_cli("export", lock_named, "-o", model_files / "x.onnx")
    assert run.exit_code == 2 and "scratch file" in run.one_error_line(), run.stderr
    assert _digest(lock_named) == before  # the lock's removal used to delete this input
    temp_named = model_files / ".y.onnx.abc123.tmp"
    shutil.copy(model_files / "m.pt", temp_named)
    run = deploy_cli("export", temp_named, "-o", model_files / "y.onnx")
    assert run.exit_code == 2 and "scratch file" in run.one_error_line()
    lock_named.unlink()
    lock_named.mkdir()  # a directory at the lock path: refused before any work (was exit 1 after the pipeline)
    run = deploy_cli("export", model_files / "m.pt", "-o", model_files / "x.onnx")
    assert run.exit_code == 2 and "lock file" in run.one_error_line() and "load" not in run.stdout
