"""Atomic writes: all or nothing, normal permissions, early one-line refusals."""

import os

import pytest

from deploy.core.atomic import atomic_path, check_output_path, write_json_atomic
from deploy.core.errors import BadInputError


def test_written_file_gets_umask_permissions_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.read_text().strip().startswith("{") and (path.stat().st_mode & 0o777) == 0o644


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "m.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where, needle", [
    ("missing/m.onnx", "does not exist"),
    ("afile/m.onnx", "is a file"),
    ("adir", "is a directory"),
])
def test_unwritable_targets_are_refused_early(tmp_path, where, needle):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(BadInputError, match=needle):
        check_output_path(tmp_path / where)
