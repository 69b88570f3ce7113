"""Whole exports: SIGTERM/SIGINT exit 143/130 and leave one whole pair (the real entry point in
a process, and the CLI in this one at more points), several exporting processes to one output
leave a consistent pair, and a full disk (a file size limit: writes fail with EFBIG) is bad
input (exit 2) that leaves the old outputs whole."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from deploy.core.atomic import HOOK_ENV

ROOT = Path(__file__).resolve().parents[2]
#: the cheapest full export: TorchScript, no onnxsim, one parity input per batch
FAST = ["--exporter", "torchscript", "--no-simplify", "--samples", "1", "--no-rewrite-diff"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _deploy(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", *map(str, args)], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _pair_source(onnx_path: Path, report_path: Path) -> str:
    """The sha256 of the checkpoint the pair on disk came from, after checking the pair belongs
    together (the report's ONNX hash is the file's; the ONNX metadata names the same checkpoint)."""
    report = json.loads(report_path.read_text())
    assert report["outputs"]["onnx"]["sha256"] == _sha(onnx_path)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta["convdeploy.source_sha256"] == report["input"]["sha256"]
    return report["input"]["sha256"]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture()
def two_checkpoints(tmp_path, zoo_checkpoint):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    shutil.copy(zoo_checkpoint("resnet20", "plain", 16, seed=0), a)
    shutil.copy(zoo_checkpoint("resnet20", "plain", 16, seed=1), b)
    return a, b


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past ``limit`` bytes fail with EFBIG in this process (SIGXFSZ ignored), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture()
def old_pair(two_checkpoints, deploy_cli):
    """m.onnx + m.report.json exported from checkpoint A (in this process: torch is warm here)."""
    a, _ = two_checkpoints
    out = a.parent / "m.onnx"
    run = deploy_cli("export", a, "-o", out, *FAST)
    assert run.exit_code == 0, run.stderr
    return out, a.parent / "m.report.json"


def test_sigterm_through_the_entry_point_exits_143_and_keeps_the_old_pair(two_checkpoints, old_pair):
    """The real `deploy` process (its own SIGTERM handler), over a pair exported from checkpoint A:
    an export of B is terminated once both of its files are staged."""
    a, b = two_checkpoints
    out, rep = old_pair
    old = (_sha(out), _sha(rep))
    rc, err = _finish(_deploy("export", b, "-o", out, *FAST, env={HOOK_ENV: "staged:term"}))
    assert rc == 143, err
    assert "Traceback" not in err and "either complete or untouched" in err
    assert _pair_source(out, rep) == _sha(a) and (_sha(out), _sha(rep)) == old
    assert _hidden(a.parent) == []


@pytest.mark.parametrize("point, sig, code", [("parity", "term", 143), ("staged", "int", 130),
                                              ("between-renames", "term", 143), ("between-renames", "int", 130)])
def test_signals_in_the_cli_leave_one_whole_pair(two_checkpoints, old_pair, deploy_cli, monkeypatch, sigterm_raises,
                                                 point, sig, code):
    """The same in this process (the CLI's guard, its exit codes), at more points."""
    a, b = two_checkpoints
    out, rep = old_pair
    old = (_sha(out), _sha(rep))
    monkeypatch.setenv(HOOK_ENV, f"{point}:{sig}")
    run = deploy_cli("export", b, "-o", out, *FAST)
    rc, err = run.exit_code, run.stderr
    assert rc == code, err
    assert "Traceback" not in err and "either complete or untouched" in err
    source = _pair_source(out, rep)
    if point == "between-renames":  # held until both renames are done: the new pair, whole
        assert source == _sha(b)
    else:
        assert (_sha(out), _sha(rep)) == old
    assert _hidden(a.parent) == []


def test_concurrent_exports_to_one_output_leave_a_consistent_pair(two_checkpoints):
    """Three processes (A, B, A) export to one path at once; each pauses between its renames,
    which is where unserialised writers mix a model with another model's report."""
    a, b = two_checkpoints
    out = a.parent / "m.onnx"
    env = {HOOK_ENV: "between-renames:sleep=0.3"}
    procs = [_deploy("export", ckpt, "-o", out, *FAST, env=env) for ckpt in (a, b, a)]
    results = [_finish(p) for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], [err for _, err in results]
    assert _pair_source(out, a.parent / "m.report.json") in (_sha(a), _sha(b))
    assert _hidden(a.parent) == []


def test_export_onto_a_full_disk_exits_2_and_keeps_the_old_pair(two_checkpoints, old_pair, deploy_cli):
    a, b = two_checkpoints
    out, rep = old_pair
    old = (_sha(out), _sha(rep))
    with file_size_limit(out.stat().st_size // 2):
        run = deploy_cli("export", b, "-o", out, *FAST)
    assert run.exit_code == 2, run.stderr
    line = run.one_error_line()
    assert line.startswith("error: cannot write") and "File too large" in line
    assert (_sha(out), _sha(rep)) == old
    assert _hidden(a.parent) == []


def test_bench_json_onto_a_full_disk_exits_2(tmp_path, folded_export, deploy_cli):
    exp = folded_export("resnet20", "plain", 32)
    model = tmp_path / "m.onnx"
    shutil.copy(exp.onnx_path, model)
    out = tmp_path / "bench.json"
    with file_size_limit(512):
        run = deploy_cli("bench", model, "--iters", "3", "--warmup", "1", "--json-file", out)
    assert run.exit_code == 2, run.stderr
    assert run.one_error_line().startswith(f"error: cannot write {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_zoo_create_and_profile_onto_a_full_disk_exit_2(tmp_path, folded_export, deploy_cli):
    exp = folded_export("resnet20", "plain", 32)
    model = tmp_path / "m.onnx"
    shutil.copy(exp.onnx_path, model)
    with file_size_limit(4096):
        create = deploy_cli("zoo", "create", "resnet20", "--input-size", "16", "-o", tmp_path / "z.pt")
    assert create.exit_code == 2, create.stderr
    assert create.one_error_line().startswith(f"error: cannot write {tmp_path / 'z.pt'} (File too large)")
    with file_size_limit(4096):  # ONNX Runtime's own trace file is cut short
        profile = deploy_cli("bench", model, "--profile", "--iters", "5", "--json-file", tmp_path / "p.json")
    assert profile.exit_code == 2, profile.stderr
    assert "could not be written whole" in profile.one_error_line()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
