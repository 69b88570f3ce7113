"""Every TensorRT name the package uses exists in the TensorRT majors it is used with.

tests/data/tensorrt_names.json.gz holds the names the real Python bindings of TensorRT
10.13.3.9 and 11.4.0.106 register (scripts/tensorrt_names.py downloads the wheels and
records them; no network here). The package is parsed, never imported:

- an attribute chain on the TensorRT module (``trt.MemoryPoolType.WORKSPACE``; the module is
  always called ``trt`` or ``self._trt``) must exist name by name;
- a method or property read on a TensorRT object must exist in its class; the objects are
  recognised by the names the code gives them (``RECEIVERS``);
- ``getattr(x, "NAME", default)`` is a version check in itself, and so is code under
  ``if major < 11:`` / ``if tensorrt_major(...) >= 11:``: such a name must exist only in
  the majors its branch runs on;
- the keywords passed to polygraphy's loaders (``exporters.tensorrt.precision.config_options`` and
  ``network_options`` for every option combination) must lead to names that exist in that
  major (``POLYGRAPHY_NAMES``: what polygraphy 0.53's loaders read for each keyword).
"""

from __future__ import annotations

import ast
import gzip
import itertools
import json
import operator
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporters.tensorrt.options import BuildOptions
from exporters.tensorrt.precision import config_options, network_options, precision_route
from validators.runtimes.tensorrt_env import SUPPORTED_MAJORS, BatchProfile

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "tensorrt_names.json.gz"
RELEASES = {10: "10.13.3.9", 11: "11.4.0.106"}
MODULE_NAMES = {"trt", "_trt"}  # `trt = require_tensorrt()`, `self._trt`
#: variable / attribute name -> the TensorRT class of the object it holds (a convention of the package)
RECEIVERS = {"engine": "ICudaEngine", "context": "IExecutionContext", "config": "IBuilderConfig",
             "_runtime": "Runtime", "timing": "ITimingCache", "offered": "ITimingCache", "builder": "Builder"}
#: polygraphy keyword -> the TensorRT names its loader reads for it (polygraphy 0.53.6 backend/trt)
POLYGRAPHY_NAMES = {
    "profiles": ["Builder.create_optimization_profile", "IOptimizationProfile.set_shape",
                 "IBuilderConfig.add_optimization_profile"],
    "tf32": ["BuilderFlag.TF32", "IBuilderConfig.set_flag", "IBuilderConfig.clear_flag"],
    "fp16": ["BuilderFlag.FP16", "IBuilderConfig.set_flag"],
    "memory_pool_limits": ["IBuilderConfig.set_memory_pool_limit"],
    "strongly_typed": ["NetworkDefinitionCreationFlag.STRONGLY_TYPED", "Builder.create_network"],
}
_OPS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}


def release_names() -> dict[int, dict[str, set[str]]]:
    doc = json.loads(gzip.decompress(DATA.read_bytes()))
    return {major: {scope: set(names) for scope, names in doc["releases"][version]["names"].items()}
            for major, version in RELEASES.items()}


NAMES = release_names()


@dataclass(frozen=True)
class Use:
    """One TensorRT name read by the code: ``where`` (file:line), the dotted name, and the majors it runs on."""

    where: str
    name: str
    majors: frozenset[int]
    optional: bool = False  # read with getattr(..., default): may be missing


def exists(name: str, major: int) -> bool:
    """``BuilderFlag.FP16`` / ``ICudaEngine.get_tensor_name`` / ``Logger.Severity.WARNING`` in ``major``."""
    names = NAMES[major]
    parts = name.split(".")
    if parts[0] not in names[""]:
        return False
    for i in range(1, len(parts)):
        scope = ".".join(parts[:i])
        if scope not in names:
            return True  # a value, not a class (e.g. an enum member's own attributes): nothing more recorded
        if parts[i] not in names[scope]:
            return False
    return True


def _chain(node: ast.AST) -> list[str] | None:
    """``trt.A.B`` / ``self._trt.A`` -> ["A", "B"]; anything else -> None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        if node.attr in MODULE_NAMES and isinstance(node.value, ast.Name) and node.value.id == "self":
            return parts[::-1]
        parts.append(node.attr)
        node = node.value
    return parts[::-1] if isinstance(node, ast.Name) and node.id in MODULE_NAMES else None


def _guard(test: ast.expr) -> set[int] | None:
    """The majors for which ``major < 11`` / ``tensorrt_major(v) >= 11`` is true; None for another test."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS
            and isinstance(test.comparators[0], ast.Constant) and isinstance(test.comparators[0].value, int)):
        return None
    left = test.left
    is_major = (isinstance(left, ast.Name) and left.id == "major") or (
        isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and left.func.id == "tensorrt_major")
    if not is_major:
        return None
    return {m for m in SUPPORTED_MAJORS if _OPS[type(test.ops[0])](m, test.comparators[0].value)}


class Collector(ast.NodeVisitor):
    """Every TensorRT name read in one module, with the majors each read runs on."""

    def __init__(self, where: str) -> None:
        self.where, self.uses, self.majors = where, [], frozenset(SUPPORTED_MAJORS)
        self._seen: set[int] = set()

    def visit_If(self, node: ast.If) -> None:
        guard = _guard(node.test)
        if guard is None:
            return self.generic_visit(node)
        outer = self.majors
        for body, majors in ((node.body, outer & guard), (node.orelse, outer - guard)):
            self.majors = frozenset(majors)
            for stmt in body:
                self.visit(stmt)
        self.majors = outer

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) == 3
                and isinstance(node.args[1], ast.Constant)):
            base = _chain(node.args[0]) if isinstance(node.args[0], ast.Attribute) else None
            if base:
                self._add(node, ".".join([*base, node.args[1].value]), optional=True)
                self._seen.add(id(node.args[0]))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if id(node) in self._seen:
            return
        chain = _chain(node)
        if chain:
            self._add(node, ".".join(chain))
            self._mark(node)
            return
        receiver = node.value
        key = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", None)
        if key in RECEIVERS and not (isinstance(receiver, ast.Attribute) and _chain(receiver)):
            self._add(node, f"{RECEIVERS[key]}.{node.attr}")
        self.generic_visit(node)

    def _mark(self, node: ast.AST) -> None:
        for sub in ast.walk(node):
            self._seen.add(id(sub))

    def _add(self, node: ast.AST, name: str, optional: bool = False) -> None:
        self.uses.append(Use(f"{self.where}:{node.lineno}", name, self.majors, optional))


def tensorrt_uses(source: str, where: str) -> list[Use]:
    collector = Collector(where)
    collector.visit(ast.parse(source))
    return collector.uses


def package_uses() -> list[Use]:
    uses = []
    for pkg in ("deploy", "exporters", "validators"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text()
            if "trt" in text:
                uses += tensorrt_uses(text, str(path.relative_to(ROOT)))
    return uses


def missing(uses: list[Use]) -> list[str]:
    bad = []
    for use in uses:
        if use.optional:
            if not any(exists(use.name, m) for m in RELEASES):
                bad.append(f"{use.where}: {use.name} exists in no TensorRT release (dead version check)")
            continue
        for major in sorted(use.majors):
            if not exists(use.name, major):
                bad.append(f"{use.where}: {use.name} does not exist in TensorRT {RELEASES[major]}")
    return bad


# ---------------------------------------------------------------- the data and the checker

def test_names_data_is_the_real_bindings() -> None:
    doc = json.loads(gzip.decompress(DATA.read_bytes()))
    assert sorted(doc["releases"]) == sorted(RELEASES.values())
    for version, rel in doc["releases"].items():
        assert rel["wheel"].startswith(f"tensorrt_cu12_bindings-{version}-") and len(rel["wheel_sha256"]) == 64
    assert DATA.stat().st_size < 64_000
    # what TensorRT 11 removed (its release notes) and what both keep
    assert exists("BuilderFlag.FP16", 10) and not exists("BuilderFlag.FP16", 11)
    assert exists("NetworkDefinitionCreationFlag.EXPLICIT_BATCH", 10)
    assert not exists("NetworkDefinitionCreationFlag.EXPLICIT_BATCH", 11)
    assert exists("IInt8EntropyCalibrator2", 10) and not exists("IInt8EntropyCalibrator2", 11)
    for major in RELEASES:
        assert exists("IExecutionContext.execute_async_v3", major) and exists("Logger.Severity.WARNING", major)
        assert exists("MemoryPoolType.WORKSPACE", major) and exists("__version__", major) and exists("nptype", major)
        assert not exists("IExecutionContext.execute_async_v9", major) and not exists("NoSuchClass", major)


def test_the_checker_sees_removed_names_and_honours_version_checks() -> None:
    src = '''
def build(trt, config, major):
    config.set_flag(trt.BuilderFlag.FP16)
    if major < 11:
        config.set_flag(trt.BuilderFlag.INT8)
    else:
        config.set_flag(trt.BuilderFlag.TF32)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    gone = getattr(trt.BuilderFlag, "NO_SUCH_FLAG", None)
    self._trt.Logger(self._trt.Logger.WARNING)
    config.no_such_method()
'''
    uses = tensorrt_uses(src, "x.py")
    by_name = {u.name: u for u in uses}
    assert by_name["BuilderFlag.INT8"].majors == {10} and by_name["BuilderFlag.TF32"].majors == {11}
    assert by_name["NetworkDefinitionCreationFlag.EXPLICIT_BATCH"].optional
    assert sorted(missing(uses)) == sorted([
        "x.py:3: BuilderFlag.FP16 does not exist in TensorRT 11.4.0.106",
        "x.py:9: BuilderFlag.NO_SUCH_FLAG exists in no TensorRT release (dead version check)",
        "x.py:11: IBuilderConfig.no_such_method does not exist in TensorRT 10.13.3.9",
        "x.py:11: IBuilderConfig.no_such_method does not exist in TensorRT 11.4.0.106",
    ])
    assert "IBuilderConfig.set_flag" in by_name and "Logger.WARNING" in by_name and "Logger" in by_name


# ---------------------------------------------------------------- the package itself

def test_every_tensorrt_name_the_package_reads_exists() -> None:
    uses = package_uses()
    names = {u.name for u in uses}
    # the collector really sees the runtime and the builder (a renamed variable would hide them)
    assert {"ICudaEngine.get_tensor_name", "IExecutionContext.execute_async_v3", "TensorIOMode.INPUT",
            "MemoryPoolType.WORKSPACE", "IBuilderConfig.set_timing_cache", "ITimingCache.serialize",
            "Runtime.deserialize_cuda_engine", "nptype", "__version__"} <= names, sorted(names)
    assert not missing(uses), "\n".join(missing(uses))


def test_only_trt_env_imports_tensorrt() -> None:
    importers = []
    for pkg in ("deploy", "exporters", "validators"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tensorrt" for a in node.names):
                    importers.append(str(path.relative_to(ROOT)))
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tensorrt":
                    importers.append(str(path.relative_to(ROOT)))
    assert importers == ["validators/runtimes/tensorrt_env.py"]


PROFILE = BatchProfile("input", (1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))


@pytest.mark.parametrize("major", SUPPORTED_MAJORS)
def test_polygraphy_keywords_lead_to_names_of_that_major(major: int, tmp_path: Path) -> None:
    combos = itertools.product((False, True), (False, True), (None, 2.0), (False, True))
    seen = set()
    for fp16, tf32, workspace, qdq in combos:
        if (fp16 and tf32) or (qdq and (fp16 or tf32)):
            continue
        opts = BuildOptions(tmp_path / "m.onnx", tmp_path / "e.plan", fp16=fp16, tf32=tf32, workspace_gib=workspace)
        kwargs = {**config_options(major, opts, PROFILE, "WORKSPACE", qdq), **network_options(major, qdq)}
        unknown = set(kwargs) - set(POLYGRAPHY_NAMES)
        assert not unknown, f"add what polygraphy reads for {unknown} to POLYGRAPHY_NAMES"
        for key in kwargs:
            if key == "tf32" and not kwargs[key]:
                continue  # polygraphy clears TF32 only where the flag exists (contextlib.suppress)
            gone = [n for n in POLYGRAPHY_NAMES[key] if not exists(n, major)]
            assert not gone, f"TensorRT {RELEASES[major]} lacks {gone}, read by polygraphy for {key}={kwargs[key]!r}"
        seen.add((precision_route(major, fp16, tf32, qdq), "fp16" in kwargs, kwargs.get("strongly_typed", False)))
    fp16_routes = {s for s in seen if s[0].startswith("fp16")}
    assert fp16_routes == ({("fp16 (builder flag)", True, False)} if major == 10 else
                           {("fp16 (fp16 ONNX, strongly typed)", False, True)})
    assert {s for s in seen if s[0].startswith("int8")} == {("int8 (explicit Q/DQ, strongly typed)", False, True)}
