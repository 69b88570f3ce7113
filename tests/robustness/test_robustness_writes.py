"""Both or neither: an ONNX file and its report are replaced together or not at all, under
failures, SIGINT/SIGTERM at every point of the write (forced with the test hook, including
between the two renames) and concurrent writers; the report's hash is of the bytes written."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import onnx
import pytest

from deploy.core.atomic import HOOK_ENV, Terminated, Transaction, lock_path, output_lock
from deploy.core.errors import BadInputError
from deploy.pipeline.steps import write_step


class _Report:
    """The two things ``write_step`` needs of a report: ``outputs`` and ``to_dict()``."""

    def __init__(self, source: str) -> None:
        self.source, self.outputs = source, {}

    def to_dict(self) -> dict:
        return {"source": self.source, "outputs": self.outputs}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _proto(base: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """A copy of ``base`` whose metadata names ``source`` (so every writer's bytes differ)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(base)
    proto.metadata_props.add(key="test.source", value=source)
    return proto


def _source_of(onnx_path: Path) -> str:
    return {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}["test.source"]


def assert_consistent_pair(onnx_path: Path, report_path: Path) -> str:
    """The pair on disk belongs together: the report's hash is the ONNX file's and both name one
    source. Returns that source."""
    report = json.loads(report_path.read_text())
    assert report["outputs"]["onnx"]["sha256"] == _sha(onnx_path)
    assert report["source"] == _source_of(onnx_path)
    return report["source"]


def assert_no_leftovers(folder: Path) -> None:
    """No temporary file, backup or lock file is left (their names start with a dot)."""
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@pytest.fixture(scope="module")
def base_proto(folded_export) -> onnx.ModelProto:
    exp = folded_export("resnet20", "plain", 32)
    assert exp.run.exit_code == 0, exp.run.stderr
    return onnx.load(str(exp.onnx_path))


@pytest.fixture()
def old_pair(tmp_path, base_proto):
    out, rep = tmp_path / "m.onnx", tmp_path / "m.report.json"
    write_step(_proto(base_proto, "old"), out, rep, _Report("old"))
    return out, rep


def test_the_report_hashes_the_bytes_written_and_replaces_an_old_pair(old_pair, base_proto):
    out, rep = old_pair
    assert assert_consistent_pair(out, rep) == "old"
    write_step(_proto(base_proto, "new"), out, rep, _Report("new"))
    assert assert_consistent_pair(out, rep) == "new"
    assert_no_leftovers(out.parent)


@pytest.mark.parametrize("point", ["transaction", "staged", "between-renames"])
@pytest.mark.parametrize("sig", ["int", "term"])
def test_a_signal_at_any_point_of_the_write_leaves_one_whole_pair(old_pair, base_proto, monkeypatch,
                                                                   sigterm_raises, point, sig):
    out, rep = old_pair
    monkeypatch.setenv(HOOK_ENV, f"{point}:{sig}")
    with pytest.raises(KeyboardInterrupt if sig == "int" else Terminated):
        write_step(_proto(base_proto, "new"), out, rep, _Report("new"))
    # before the renames the old pair is untouched; a signal during them waits until both are done
    assert assert_consistent_pair(out, rep) == ("new" if point == "between-renames" else "old")
    assert_no_leftovers(out.parent)


def test_a_failed_rename_puts_the_old_file_back(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "a.report.json"
    a.write_bytes(b"old onnx")
    with pytest.raises(OSError), Transaction() as txn:
        txn.stage_bytes(a, b"new onnx")
        txn.stage_bytes(b, b"new report")
        b.mkdir()  # the second rename now fails (a directory with a file in it cannot be replaced)
        (b / "x").write_bytes(b"")
        txn.commit()
    assert a.read_bytes() == b"old onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.report.json"]


def test_leaving_a_transaction_without_commit_removes_its_temporary_files(tmp_path):
    with Transaction() as txn:
        tmp = txn.reserve(tmp_path / "m.onnx")
        tmp.write_bytes(b"half")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_to_one_output_leave_a_consistent_pair(tmp_path, base_proto, monkeypatch):
    """Writers in threads (each with its own lock file descriptor, as separate processes have),
    with a pause between the renames to widen the window a mix would need."""
    monkeypatch.setenv(HOOK_ENV, "between-renames:sleep=0.02")
    out, rep = tmp_path / "m.onnx", tmp_path / "m.report.json"
    errors: list[BaseException] = []

    def write(source: str) -> None:
        try:
            write_step(_proto(base_proto, source), out, rep, _Report(source))
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised by the test
            errors.append(exc)

    for trial in range(4):
        threads = [threading.Thread(target=write, args=(f"writer-{trial}-{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert assert_consistent_pair(out, rep).startswith(f"writer-{trial}-")
        assert_no_leftovers(tmp_path)


def test_a_second_writer_waits_then_gives_up_with_one_line(tmp_path):
    out = tmp_path / "m.onnx"
    with output_lock(out):
        assert lock_path(out).exists()
        with pytest.raises(BadInputError, match="another convdeploy process is writing .*m.onnx"):
            with output_lock(out, timeout=0.2):
                pass
    assert not lock_path(out).exists()
    with output_lock(out, timeout=0.2):  # free again
        pass
