"""Shared pytest hooks: `gpu`-marked tests run only where PyTorch sees a CUDA GPU, and those also
marked `tensorrt` only where TensorRT 10 or 11 imports as well."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from deploy.commands.common import terminate_on_sigterm


def _cuda_ready() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, torch.cuda.get_device_name(0)
    return False, f"no CUDA GPU visible to PyTorch {torch.__version__}"


def _tensorrt_ready() -> tuple[bool, str]:
    from validators.runtimes.tensorrt_env import tensorrt_available

    return tensorrt_available()


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op torch thread per xdist worker: with `-n 2` on 2 cores, OpenMP's spinning
    barriers make 2 threads per worker many times slower than 1 (a ResNet-18 CoC export
    measured here under load: 37 s CPU with 2 threads, 7 s with 1)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


#: fixtures that train, export or serve a whole model: a test using one is end to end (marked ``e2e``)
E2E_FIXTURES = {"trained", "digits_train_pngs", "folded_export", "model_files", "digits_model"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the e2e mark is given here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("triton") is not None:
            item.add_marker(pytest.mark.e2e)
    for marker, ready in (("gpu", _cuda_ready), ("tensorrt", _tensorrt_ready)):
        marked = [item for item in items if item.get_closest_marker(marker) is not None]
        if not marked:
            continue
        ok, reason = ready()
        if ok:
            continue
        skip = pytest.mark.skip(reason=f"{marker} test: {reason}")
        for item in marked:
            item.add_marker(skip)


# --- end-to-end CLI helpers (tests/export/test_export_cli.py, test_export_bad_input.py, test_reference_checkpoints.py)


class CliRun:
    """One `deploy …` invocation through typer's runner: exit code, stdout, stderr, exception."""

    def __init__(self, result) -> None:
        self.exit_code: int = result.exit_code
        self.stdout: str = result.stdout
        self.stderr: str = result.stderr
        self.exception = result.exception

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def one_error_line(self) -> str:
        """The run's only error line (docs/architecture.md: one line naming the problem and the fix), after
        checking that no traceback was printed and the guard turned the error into an exit code."""
        lines = [ln for ln in self.error_lines if not ln.startswith("warning:")]
        assert len(lines) == 1 and lines[0].startswith("error: "), self.stderr
        assert "Traceback" not in self.stdout + self.stderr
        assert isinstance(self.exception, SystemExit)
        return lines[0]


@pytest.fixture(scope="session")
def deploy_cli():
    """``deploy_cli("export", path, "-o", out) -> CliRun`` (arguments may be paths)."""
    from typer.testing import CliRunner

    from deploy.cli import app

    runner = CliRunner()

    def invoke(*args) -> CliRun:
        return CliRun(runner.invoke(app, [str(a) for a in args]))

    return invoke


@pytest.fixture(scope="session")
def zoo_checkpoint(tmp_path_factory):
    """``make(arch, conv, size=None, seed=0, **conv_kwargs) -> Path``: a convdeploy checkpoint with
    seeded random weights and non-trivial BN statistics (as `deploy zoo create`), built once per
    session and worker. Tests must not modify the returned file."""
    from deploy.load.checkpoint import save_checkpoint
    from deploy.models.random_init import random_model

    root = tmp_path_factory.mktemp("zoo")
    cache: dict[tuple, object] = {}

    def make(arch: str, conv: str = "plain", size: int | None = None, seed: int = 0, **conv_kwargs):
        key = (arch, conv, size, seed, tuple(sorted(conv_kwargs.items())))
        if key not in cache:
            model = random_model(arch, conv, input_size=(size, size) if size else None, seed=seed, **conv_kwargs)
            name = "_".join([arch, conv, str(size or "native"), str(seed)] + [f"{k}{v}" for k, v in key[4]])
            cache[key] = save_checkpoint(model, root / f"{name}.pt")
        return cache[key]

    return make


#: ``--samples`` of the end-to-end exports: K seeded inputs at batch 1 and at batch 3
E2E_SAMPLES = 2


class Exported:
    """A finished `deploy export` run: checkpoint, output paths, CLI result and parsed report."""

    def __init__(self, checkpoint, onnx_path, report_path, run: CliRun) -> None:
        import json

        self.checkpoint, self.onnx_path, self.report_path, self.run = checkpoint, onnx_path, report_path, run
        self.report = json.loads(report_path.read_text()) if run.exit_code == 0 else None


@pytest.fixture(scope="session")
def folded_export(zoo_checkpoint, deploy_cli, tmp_path_factory):
    """``get(arch, conv, size) -> Exported``: `deploy export CKPT --fold -o …` of a zoo checkpoint, run
    once per session and worker (the per-kind tests and the twin comparisons share them)."""
    root = tmp_path_factory.mktemp("exports")
    cache: dict[tuple, Exported] = {}

    def get(arch: str, conv: str, size: int) -> Exported:
        key = (arch, conv, size)
        if key not in cache:
            ckpt = zoo_checkpoint(arch, conv, size)
            out = root / f"{arch}_{conv}_{size}.onnx"
            # (--no-rewrite-diff: the second, comparison export is tested once, in test_rewrite_graphs.py)
            run = deploy_cli("export", ckpt, "--fold", "-o", out, "--samples", E2E_SAMPLES, "--no-rewrite-diff")
            cache[key] = Exported(ckpt, out, root / f"{arch}_{conv}_{size}.report.json", run)
        return cache[key]

    return get


@pytest.fixture()
def model_files(tmp_path, folded_export) -> Path:
    """A fresh folder holding m.pt (ResNet-20 plain at 32x32) and its dynamic-batch export m.onnx:
    copies, so a test may point outputs at them or corrupt them."""
    exp = folded_export("resnet20", "plain", 32)
    assert exp.run.exit_code == 0, exp.run.stderr
    shutil.copy(exp.checkpoint, tmp_path / "m.pt")
    shutil.copy(exp.onnx_path, tmp_path / "m.onnx")
    return tmp_path


@pytest.fixture()
def sigterm_raises():
    """SIGTERM raises Terminated in this process, as in the `deploy` entry point (the default would end pytest)."""
    previous = signal.getsignal(signal.SIGTERM)
    terminate_on_sigterm()
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, deploy_cli):
    """(checkpoint, its folded ONNX export, the digits test split as PNGs, the checkpoint's meta): a digits
    ResNet-20 trained once per session and worker. Tests must not modify these files."""
    import torch

    from tests.digits_data import write_digits_folder

    root = tmp_path_factory.mktemp("trained")
    ckpt, onnx_path = root / "m.pt", root / "m.onnx"
    run = deploy_cli("zoo", "train", "resnet20", "--conv", "plain", "--data", "digits", "--epochs", 2, "-o", ckpt)
    assert run.exit_code == 0, run.stderr
    run = deploy_cli("export", ckpt, "-o", onnx_path, "--samples", 1, "--exporter", "torchscript", "--no-rewrite-diff")
    assert run.exit_code == 0, run.stderr
    meta = torch.load(ckpt, weights_only=True)["meta"]
    return ckpt, onnx_path, write_digits_folder(root / "digits_png"), meta


@pytest.fixture(scope="session")
def digits_train_pngs(tmp_path_factory) -> Path:
    """The digits' training split as an image folder of PNGs (1438 images)."""
    from tests.digits_data import write_digits_folder

    return write_digits_folder(tmp_path_factory.mktemp("digits_train") / "train", "train")
