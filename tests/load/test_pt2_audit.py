""".pt2 archives never run code without --trust-pickle (deploy/load/pt2_audit.py).

Each test crafts a real ``torch.export.save`` archive with one hazard planted in it — a weight
stored as a pickle, a shape expression or an input guard that is code, pickled sample inputs,
an AOTInductor folder — whose code would create a marker file. Every command that reads
checkpoints refuses it with exit 2 and the marker never appears; with ``--trust-pickle`` the
pickled weight's code does run, which shows the planted exploit is live.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from deploy.load.pt2_audit import pt2_hazards, safe_guard, safe_shape_expression
from tests.helpers import randomise_bn

SHAPE = (3, 16, 16)


class _RunsCode:
    """Pickles to ``eval(code)``: what a hostile archive stores in place of a weight."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def _marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


@pytest.fixture()
def good_pt2(tmp_path) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    randomise_bn(model, torch.Generator().manual_seed(0))
    dims = {0: torch.export.Dim("batch", max=64), 2: torch.export.Dim("h", min=8, max=64)}
    dims[3] = dims[2]
    path = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, *SHAPE),), dynamic_shapes=(dims,)), path)
    return path


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy the archive, passing each (relative name, bytes) through ``change`` (None drops it), plus
    what ``change.extra`` adds."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for name in zin.namelist():
            rel = name.split("/", 1)[1]
            data = change(rel, zin.read(name))
            if data is not None:
                zout.writestr(name, data)
        for rel, data in getattr(change, "extra", {}).items():
            zout.writestr(f"{root}/{rel}", data)
    return dst


def pickled_weight(src: Path, dst: Path, marker: Path) -> Path:
    def change(rel: str, data: bytes) -> bytes:
        if rel == "data/weights/model_weights_config.json":
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if rel == "data/weights/weight_0":
            buffer = io.BytesIO()
            torch.save(_RunsCode(_marker_code(marker)), buffer)
            return buffer.getvalue()
        return data
    return _rewrite(src, dst, change)


def _edit_model(src: Path, dst: Path, edit) -> Path:
    def change(rel: str, data: bytes) -> bytes:
        if rel == "models/model.json":
            document = json.loads(data)
            edit(document)
            return json.dumps(document).encode()
        return data
    return _rewrite(src, dst, change)


def code_in_guard(src: Path, dst: Path, marker: Path) -> Path:
    # single quotes only: torch pastes the guard into a double-quoted message of the code it execs
    return _edit_model(src, dst, lambda d: d["guards_code"].append(f"__import__('os').mkdir('{marker}') or True"))


def code_in_shape_expression(src: Path, dst: Path, marker: Path) -> Path:
    def edit(document: dict) -> None:
        for value in document["graph_module"]["graph"]["tensor_values"].values():
            for size in value["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] = f"eval({_marker_code(marker)!r})"
                    return
    return _edit_model(src, dst, edit)


def pickled_sample_inputs(src: Path, dst: Path, marker: Path) -> Path:
    def change(rel: str, data: bytes) -> bytes:
        if rel.startswith("data/sample_inputs/"):
            buffer = io.BytesIO()
            torch.save(((_RunsCode(_marker_code(marker)),), {}), buffer)
            return buffer.getvalue()
        return data
    return _rewrite(src, dst, change)


HAZARDS = {"pickled weight": pickled_weight, "guard": code_in_guard, "shape expression": code_in_shape_expression,
           "sample inputs": pickled_sample_inputs}


@pytest.mark.parametrize("hazard", sorted(HAZARDS))
def test_hostile_pt2_refused_by_every_command(hazard, good_pt2, tmp_path, deploy_cli) -> None:
    good_onnx = tmp_path / "good.onnx"
    assert deploy_cli("export", good_pt2, "-o", good_onnx, "--samples", 1, "--input-size", 16).exit_code == 0
    marker = tmp_path / "marker"
    evil = HAZARDS[hazard](good_pt2, tmp_path / "evil.pt2", marker)
    assert pt2_hazards(evil), "the planted hazard must be found"
    before = evil.read_bytes()
    for args in (("export", evil, "-o", tmp_path / "e.onnx"), ("inspect", evil), ("bench", evil),
                 ("validate", evil, good_onnx)):
        run = deploy_cli(*args)
        assert run.exit_code == 2, (args, run.stdout, run.stderr)
        line = run.one_error_line()
        assert "would run code" in line and ("--trust-pickle" in line or args[0] == "bench"), line
        assert not marker.exists(), f"{args[0]} ran the archive's code"
    assert evil.read_bytes() == before and not (tmp_path / "e.onnx").exists()


@pytest.mark.parametrize("hazard", sorted(HAZARDS))
def test_planted_code_is_live_when_trusted(hazard, good_pt2, tmp_path) -> None:
    """Each planted exploit is live: with trust_pickle torch runs its code (so the refusal above is what
    keeps the marker away)."""
    from deploy.load.formats import load_exported_program

    marker = tmp_path / "marker"
    evil = HAZARDS[hazard](good_pt2, tmp_path / "evil.pt2", marker)
    try:
        module, _ = load_exported_program(evil, trust_pickle=True)
        module(torch.randn(1, *SHAPE))
    except Exception:  # noqa: BLE001 - the planted values are no tensors; what matters is that the code ran
        pass
    assert marker.exists()


def test_clean_archive_exports_and_aoti_folder_is_refused(good_pt2, tmp_path, deploy_cli) -> None:
    assert pt2_hazards(good_pt2) == []
    run = deploy_cli("inspect", good_pt2)
    assert run.exit_code == 0, run.stderr

    def add_aoti(rel: str, data: bytes) -> bytes:
        return data
    add_aoti.extra = {"data/aotinductor/model/model.so": b"\x7fELF"}  # type: ignore[attr-defined]
    aoti = _rewrite(good_pt2, tmp_path / "aoti.pt2", add_aoti)
    assert any("compiled code" in h for h in pt2_hazards(aoti))
    run = deploy_cli("inspect", aoti)
    assert run.exit_code == 2 and "compiled code" in run.one_error_line()


def test_non_operator_targets_and_module_imports_are_hazards(good_pt2, tmp_path) -> None:
    def call_torch_load(document: dict) -> None:
        document["graph_module"]["graph"]["nodes"][0]["target"] = "torch.load"

    assert any("'torch.load'" in h for h in pt2_hazards(_edit_model(good_pt2, tmp_path / "t.pt2", call_torch_load)))

    def defaultdict_spec(document: dict) -> None:
        calls = document["graph_module"]["module_call_graph"][0]["signature"]
        calls["in_spec"] = calls["in_spec"].replace('"builtins.dict"', '"collections.defaultdict"').replace(
            '"context": "[]"', '"context": "{\\"default_factory_module\\": \\"antigravity\\"}"')

    assert any("imports a module" in h for h in pt2_hazards(_edit_model(good_pt2, tmp_path / "d.pt2",
                                                                         defaultdict_spec)))


@pytest.mark.parametrize("text,ok", [
    ("Symbol('s16', positive=True, integer=True)", True),
    ("Mul(Integer(4), Pow(Max(Integer(1), Add(Symbol('s16', integer=True), Integer(-2))), Integer(2)))", True),
    ("FloorDiv(Symbol('s1', integer=True), Integer(2))", True),
    ("s0 + 2*s1", True),
    ("preview(Symbol('x'))", False),  # sympy's namespace holds functions that run programs
    ("Symbol('x').__class__", False),
    ("eval('1')", False),
    ("Symbol('a b')", False),
    ("[].pop()", False),
])
def test_shape_expressions(text, ok) -> None:
    assert safe_shape_expression(text) is ok


@pytest.mark.parametrize("text,ok", [
    ("L['input'].size()[3] == L['input'].size()[2]", True),
    ("2 <= L['x'].size()[0] and L['x'].size()[0] <= 64", True),
    ("L['x'].size()[2] % 2 == 0", True),
    ("L['x'].__class__ == 1", False),
    ("L['x'].size()[0] == 1\nimport os", False),
    ("L['x'].numpy() == 1", False),
    ("open('/tmp/x') == 1", False),
    ("L['x\"+y'].size()[0] == 1", False),
])
def test_guards(text, ok) -> None:
    assert safe_guard(text) is ok


def test_damaged_central_directory_is_exit_2(good_pt2, tmp_path, deploy_cli) -> None:
    """A zip whose end record is intact but whose central directory is damaged still passes
    ``zipfile.is_zipfile``; opening it must be one exit-2 line, not an internal error."""
    data = bytearray(good_pt2.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central:central + 4] = b"XX\x01\x02"
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(bytes(data))
    for args in (["inspect", str(bad)], ["export", str(bad), "-o", str(tmp_path / "o.onnx")]):
        run = deploy_cli(*args)
        assert run.exit_code == 2, run.stderr
        assert "corrupt" in run.stderr and "internal error" not in run.stderr
    assert not (tmp_path / "o.onnx").exists()
