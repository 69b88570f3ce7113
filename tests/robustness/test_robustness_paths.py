"""No output ever destroys an input: every command's outputs are checked against its inputs and
one another (resolved path, symlink, hard link, a file to be created through a linked folder)
before any work, exit 2 with one line, nothing touched."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from deploy.core.errors import BadInputError
from deploy.core.pathguard import guard_paths, same_file


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too) -> sha256 of its bytes, or its link target."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------- the library guard


def test_same_file_by_path_symlink_hard_link_and_linked_folder(tmp_path):
    real = tmp_path / "m.pt"
    real.write_bytes(b"weights")
    (tmp_path / "link.pt").symlink_to(real)
    os.link(real, tmp_path / "hard.pt")
    (tmp_path / "alias").symlink_to(tmp_path)
    assert same_file(real, tmp_path / "link.pt")
    assert same_file(real, tmp_path / "hard.pt")
    assert same_file(real, tmp_path / "sub" / ".." / "m.pt") or not (tmp_path / "sub").exists()
    assert same_file(tmp_path / "alias" / "m.pt", real)
    # a file that does not exist yet, through the linked folder, is the same would-be file
    assert same_file(tmp_path / "alias" / "new.json", tmp_path / "new.json")
    # a dangling link names the file it would create
    (tmp_path / "dangling.json").symlink_to(tmp_path / "target.json")
    assert same_file(tmp_path / "dangling.json", tmp_path / "target.json")
    assert not same_file(real, tmp_path / "other.pt")


def test_guard_refuses_an_output_that_is_an_input_or_another_output(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"weights")
    os.link(ckpt, tmp_path / "hard.json")
    with pytest.raises(BadInputError, match=r"`report` .*hard.json is the input checkpoint .*would destroy the input"):
        guard_paths({"the input checkpoint": ckpt}, {"`output`": tmp_path / "m.onnx", "`report`": tmp_path / "hard.json"})
    with pytest.raises(BadInputError, match="`output` and `report` are the same file"):
        guard_paths({"the input checkpoint": ckpt}, {"`output`": tmp_path / "a.onnx", "`report`": tmp_path / "a.onnx"})
    outs = guard_paths({"the input checkpoint": ckpt, "unused": None},
                       {"`output`": tmp_path / "a.onnx", "`report`": tmp_path / "a.json", "`engine`": None})
    assert outs == {"`output`": tmp_path / "a.onnx", "`report`": tmp_path / "a.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.json", "m.pt"]  # the guard wrote nothing


def test_python_api_callers_get_the_guard_too(tmp_path, zoo_checkpoint):
    from deploy.load.source import ModelSource
    from deploy.pipeline.export import run_export
    from deploy.pipeline.options import ExportOptions
    from deploy.pipeline.validate import run_validate

    ckpt = tmp_path / "m.pt"
    shutil.copy(zoo_checkpoint("resnet20", "plain", 32), ckpt)
    (tmp_path / "r.json").symlink_to(ckpt)
    before = _tree(tmp_path)
    with pytest.raises(BadInputError, match="is the input checkpoint"):
        run_export(ExportOptions(source=ModelSource(ckpt), output=tmp_path / "m.onnx", report=tmp_path / "r.json"))
    with pytest.raises(BadInputError, match="is the input checkpoint"):
        run_validate(ckpt, tmp_path / "m.onnx", report=tmp_path / "r.json")
    assert _tree(tmp_path) == before


# ---------------------------------------------------------------- every command, through the CLI


@pytest.fixture()
def workdir(model_files):
    """``model_files`` plus links to them (the tests point outputs at them)."""
    tmp_path = model_files
    (tmp_path / "ckpt-link.json").symlink_to(tmp_path / "m.pt")
    (tmp_path / "onnx-link.json").symlink_to(tmp_path / "m.onnx")
    os.link(tmp_path / "m.onnx", tmp_path / "hard.json")
    (tmp_path / "alias").symlink_to(tmp_path)
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "claims.md").symlink_to(tmp_path / "claims" / "claims.json")
    return tmp_path


CASES = {
    "validate-report-is-the-checkpoint": (["validate", "m.pt", "m.onnx", "--report", "m.pt"], "is the input checkpoint"),
    "validate-report-is-the-onnx": (["validate", "m.pt", "m.onnx", "--report", "m.onnx"], "is the ONNX model"),
    "validate-report-symlinked-to-the-checkpoint": (["validate", "m.pt", "m.onnx", "--report", "ckpt-link.json"],
                                                    "is the input checkpoint"),
    "validate-report-hard-linked-to-the-onnx": (["validate", "m.pt", "m.onnx", "--report", "hard.json"],
                                                "is the ONNX model"),
    "bench-json-is-the-model": (["bench", "m.onnx", "--json-file", "m.onnx"], "is the benchmarked artifact"),
    "bench-json-is-the-vs-model": (["bench", "m.onnx", "--vs", "m.onnx", "--json-file", "alias/m.onnx"],
                                   "is the benchmarked artifact"),
    "bench-json-through-a-linked-folder": (["bench", "m.onnx", "--json-file", "alias/onnx-link.json"],
                                           "is the benchmarked artifact"),
    "bench-profile-json-is-the-model": (["bench", "m.onnx", "--profile", "--json-file", "hard.json"],
                                        "is the benchmarked artifact"),
    "bench-profile-default-json-linked-to-the-model": (["bench", "m.onnx", "--profile"], "is the profiled model"),
    "export-report-is-the-output": (["export", "m.pt", "-o", "out.onnx", "--report", "out.onnx"],
                                    "--output and --report are the same file"),
    "export-report-is-the-checkpoint": (["export", "m.pt", "-o", "out.onnx", "--report", "alias/m.pt"],
                                        "is the input checkpoint"),
    "export-output-symlinked-to-the-checkpoint": (["export", "m.pt", "-o", "ckpt.onnx"], "is the input checkpoint"),
    "export-engine-is-the-report": (["export", "m.pt", "-o", "out.onnx", "--report", "e.plan", "--engine", "e.plan"],
                                    "are the same file"),
    "build-engine-is-the-onnx": (["build", "m.onnx", "-o", "onnx-link.plan"], "is the ONNX model"),
    "build-json-is-the-engine": (["build", "m.onnx", "-o", "e.plan", "--json-file", "e.plan"], "is the engine"),
    "inspect-json-is-the-model": (["inspect", "m.onnx", "--json-file", "alias/m.onnx"], "is the inspected file"),
    "validate-json-file-is-the-onnx": (["validate", "m.pt", "m.onnx", "--json-file", "hard.json"], "is the ONNX model"),
    "claims-files-linked-to-each-other": (["claims", "-o", "claims", "--quick"], "are the same file"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_every_command_refuses_outputs_that_are_inputs(workdir, deploy_cli, monkeypatch, case):
    args, needle = CASES[case]
    (workdir / "ckpt.onnx").symlink_to(workdir / "m.pt")
    (workdir / "onnx-link.plan").symlink_to(workdir / "m.onnx")
    (workdir / "m.profile.json").symlink_to(workdir / "m.onnx")
    monkeypatch.chdir(workdir)
    before = _tree(workdir)
    run = deploy_cli(*args)
    assert run.exit_code == 2, run.stdout + run.stderr
    assert needle in run.one_error_line()
    assert _tree(workdir) == before  # nothing written, nothing replaced, no temporary file left
