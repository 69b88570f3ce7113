"""Every bad input through `deploy export` (and `deploy validate`): the exit code of
docs/architecture.md, one line naming the problem and the fix, no traceback (unless --debug), no output
file of any kind left behind, and the input file's bytes unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from deploy.core.atomic import sha256_file


@dataclass
class Case:
    """How to make the bad input, what to pass, and what the one error line must say."""

    make: Callable[[Path, Callable], tuple[Path, list]]  # (in_dir, zoo_checkpoint) -> (input, extra args)
    code: int
    needles: tuple[str, ...]
    output: str | None = "out/m.onnx"  # relative to tmp_path; None: the case passes its own -o


def _zoo_copy(in_dir: Path, zoo, name: str = "model.pt", arch: str = "resnet20", conv: str = "plain") -> Path:
    target = in_dir / name
    target.write_bytes(zoo(arch, conv, 32).read_bytes())
    return target


def _state(zoo, conv: str = "plain") -> dict:
    return torch.load(zoo("resnet20", conv, 32), weights_only=True)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _edited(in_dir: Path, zoo, edit: Callable[[dict], None]) -> Path:
    ckpt = _state(zoo)
    state = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    edit(state)
    ckpt["state_dict"] = state
    return _save(ckpt, in_dir / "edited.pt")


def _small_net(train: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(8 * 16 * 16, 5))
    return net.train(train)


def _set(state: dict, key: str, index: tuple, value: float) -> None:
    state[key][index] = value


CASES: dict[str, Case] = {
    "missing-file": Case(lambda d, z: (d / "nope.pt", []), 2, ("no such file", "check the path")),
    "directory": Case(lambda d, z: (_mkdir(d / "ckpt_dir"), []), 2,
                      ("is a directory", "point to the model.pt")),
    "empty-file": Case(lambda d, z: (_write(d / "e.pt", b""), []), 2, ("is empty", "save it again")),
    "truncated-file": Case(
        lambda d, z: (_write(d / "t.pt", z("resnet20", "plain", 32).read_bytes()[:200_000]), []),
        2, ("is truncated or corrupt", "cut short", "save the checkpoint again")),
    "random-bytes": Case(
        lambda d, z: (_write(d / "r.pt", np.random.default_rng(0).bytes(8192)), []),
        2, ("not a PyTorch checkpoint", "torch.save")),
    "bare-state-dict-without-arch": Case(
        lambda d, z: (_save(_state(z)["state_dict"], d / "sd.pt"), []), 2, ("bare state_dict", "give --arch and --conv")),
    "resnet20-weights-as-resnet18": Case(
        lambda d, z: (_save(_state(z)["state_dict"], d / "sd.pt"), ["--arch", "resnet18", "--conv", "plain"]), 2,
        ("do not fit resnet18", "missing keys layer4.0.", "unexpected keys layer1.2.", "give the --arch, --conv and --conv-opt")),
    "convdeploy-checkpoint-with-other-arch": Case(
        lambda d, z: (_zoo_copy(d, z), ["--arch", "resnet18"]), 2,
        ("convdeploy checkpoint of resnet20", "--arch resnet18", "drop --arch")),
    "tensor-removed": Case(
        lambda d, z: (_edited(d, z, lambda s: s.pop("layer2.1.conv1.weight")), []), 2,
        ("do not fit resnet20", "missing keys layer2.1.conv1.weight", "unexpected keys none", "re-save")),
    "tensor-reshaped": Case(
        lambda d, z: (_edited(d, z, lambda s: s.__setitem__("fc.weight", s["fc.weight"][:, :32])), []), 2,
        ("shape mismatch for fc.weight (checkpoint (10, 32) vs model (10, 64))", "re-save")),
    "module-in-train-mode": Case(
        lambda d, z: (_save(_small_net(train=True), d / "m.pt"), ["--trust-pickle", "--input-size", "32"]), 2,
        ("training mode", "model.eval()")),
    "pickled-module-without-trust": Case(
        lambda d, z: (_save(_small_net(train=False).eval(), d / "m.pt"), ["--input-size", "32"]), 2,
        ("pickled Python objects", "--trust-pickle", "state_dict()")),
    "spconv-stride-2-on-odd-size": Case(
        lambda d, z: (_zoo_copy(d, z, conv="sp"), ["--input-size", "33"]), 2,
        ("cannot take a 33x33 input", "stride 2", "choose another --input-size")),
    "nan-in-conv-weight": Case(
        lambda d, z: (_edited(d, z, lambda s: _set(s, "layer1.0.conv1.weight", (0, 0, 1, 1), float("nan"))), []), 2,
        ("NaN or Inf in the weights", "layer1.0.conv1.weight", "earlier checkpoint")),
    "inf-in-bn-statistics": Case(
        lambda d, z: (_edited(d, z, lambda s: _set(s, "bn1.running_var", (3,), float("inf"))), []), 2,
        ("NaN or Inf in the weights", "bn1.running_var")),
    "output-in-missing-directory": Case(
        lambda d, z: (_zoo_copy(d, z), ["-o", d.parent / "no_such_dir" / "m.onnx"]), 2,
        ("no_such_dir does not exist", "create it first"), output=None),
    "output-under-a-file": Case(
        lambda d, z: (_zoo_copy(d, z), ["-o", d / "model.pt" / "m.onnx"]), 2,
        ("is a file, not a directory", "choose another output path"), output=None),
    "output-not-onnx": Case(lambda d, z: (_zoo_copy(d, z), ["-o", d.parent / "out" / "m.txt"]), 2,
                            ("must end in .onnx",), output=None),
    "report-over-the-input": Case(lambda d, z: (_zoo_copy(d, z), ["--report", d / "model.pt"]), 2,
                                  ("is the input checkpoint", "would destroy the input", "choose another")),
    "bad-batch": Case(lambda d, z: (_zoo_copy(d, z), ["--batch", "0"]), 2, ("--batch must be", "positive integer")),
    "bad-exporter": Case(lambda d, z: (_zoo_copy(d, z), ["--exporter", "tflite"]), 2, ("--exporter must be",)),
    # a real parity failure: the fold's float32 rounding is above a zero tolerance (exit 3)
    "parity-below-rounding": Case(lambda d, z: (_zoo_copy(d, z, conv="doconv"), ["--rtol", "0", "--samples", "1"]), 3,
                                  ("parity failed for folded-torch", "first diverging layer", "do not ship")),
}


def _tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` (hidden temp files included) with its sha256."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, zoo_checkpoint, deploy_cli, tmp_path) -> None:
    case = CASES[name]
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    source, extra = case.make(in_dir, zoo_checkpoint)
    before = _tree(tmp_path)
    args = ["export", source, *extra] + (["-o", tmp_path / case.output] if case.output else [])
    run = deploy_cli(*args)
    assert run.exit_code == case.code, run.stdout + run.stderr
    line = run.one_error_line()
    for needle in case.needles:
        assert needle in line, line
    assert _tree(tmp_path) == before  # no onnx, no report, no temp file; the input untouched
    assert not (tmp_path / "no_such_dir").exists()


def test_read_only_output_directory(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    ckpt = zoo_checkpoint("resnet20", "plain", 32)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a chmod 555 directory is still writable (see the read-only mount test)")
        run = deploy_cli("export", ckpt, "-o", locked / "m.onnx")
        assert run.exit_code == 2
        assert "is not writable" in run.one_error_line()
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def _unwritable_dir() -> Path | None:
    """A directory that refuses new files even to root (a read-only mount such as /sys)."""
    import tempfile

    for candidate in (Path("/sys"), Path("/proc/sys"), Path("/sys/fs")):
        if not candidate.is_dir():
            continue
        try:
            fd, name = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(name)
    return None


def test_read_only_mount(zoo_checkpoint, deploy_cli) -> None:
    target = _unwritable_dir()
    if target is None:
        pytest.skip("no read-only directory on this machine")
    ckpt = zoo_checkpoint("resnet20", "plain", 32)
    digest = sha256_file(ckpt)
    run = deploy_cli("export", ckpt, "-o", target / "convdeploy-test.onnx")
    assert run.exit_code == 2
    line = run.one_error_line()
    assert f"output directory {target} is not writable" in line and "choose another output path" in line
    assert not (target / "convdeploy-test.onnx").exists() and sha256_file(ckpt) == digest


def test_corrupted_onnx_fails_validate_naming_the_layer(folded_export, deploy_cli, tmp_path) -> None:
    exp = folded_export("resnet20", "plain", 32)
    assert exp.run.exit_code == 0, exp.run.stderr
    proto = onnx.load(str(exp.onnx_path))
    init = next(t for t in proto.graph.initializer if t.name == "layer2.1.conv1.weight")
    weight = numpy_helper.to_array(init).copy()
    weight[5] *= 1.5  # one output channel of one conv
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    digests = (sha256_file(exp.checkpoint), sha256_file(broken))

    run = deploy_cli("validate", exp.checkpoint, broken, "--samples", 2)
    assert run.exit_code == 3, run.stdout + run.stderr
    line = run.one_error_line()
    assert "parity failed for onnxruntime-cpu vs training-form" in line
    assert "first diverging layer: layer2.1.conv1" in line and "do not ship" in line
    assert (sha256_file(exp.checkpoint), sha256_file(broken)) == digests
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]


def test_validate_bad_onnx_file(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    ckpt = zoo_checkpoint("resnet20", "plain", 32)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(1).bytes(2048))
    for target, needle in ((tmp_path / "none.onnx", "no such ONNX file"), (junk, "ONNX Runtime cannot load the model")):
        run = deploy_cli("validate", ckpt, target, "--report", tmp_path / "v.json")
        assert run.exit_code == 2
        assert needle in run.one_error_line()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]


def test_debug_shows_the_traceback_and_keeps_the_exit_code(deploy_cli, tmp_path) -> None:
    run = deploy_cli("--debug", "export", tmp_path / "missing.pt")
    assert run.exit_code == 2
    assert "Traceback" in run.stderr and "BadInputError" in run.stderr and "no such file" in run.stderr


def _subprocess(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])


def test_real_process_one_line_then_traceback_with_debug(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(2).bytes(1000))
    plain = _subprocess("export", str(junk), "-o", str(tmp_path / "m.onnx"))
    assert plain.returncode == 2
    errors = [ln for ln in plain.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "not a PyTorch checkpoint" in errors[0]
    assert "Traceback" not in plain.stderr + plain.stdout
    debug = _subprocess("--debug", "export", str(junk), "-o", str(tmp_path / "m.onnx"))
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "BadInputError" in debug.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt"]


def test_engine_without_tensorrt_is_exit_5_before_any_work(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    from validators.runtimes.tensorrt_env import tensorrt_available

    if tensorrt_available()[0]:
        pytest.skip("TensorRT and a GPU are present here: the engine path is covered by the gpu tests")
    ckpt = _zoo_copy(tmp_path, zoo_checkpoint)
    before = sha256_file(ckpt)
    run = deploy_cli("export", ckpt, "-o", tmp_path / "m.onnx", "--engine", tmp_path / "e.plan")
    assert run.exit_code == 5
    line = run.one_error_line()
    assert "TensorRT" in line and "deploy bench model.onnx" in line
    assert "load" not in run.stdout  # refused before the first step ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"] and sha256_file(ckpt) == before
