"""What a ``.pt2`` archive would run while ``torch.export.load`` reads it, found before it is read.

``torch.export.load`` runs code from the file in several places: payloads marked
``use_pickle`` (weights and constants, ``torch.load(weights_only=False)``), custom and opaque
objects (``pickle.loads``), sample inputs and legacy weight files that fail the weights-only
unpickler (it falls back to a full one), AOTInductor packages (shared libraries), the symbolic
shape expressions (``sympy.sympify``, which evaluates its text), the input guards (generated
Python that ``ExportedProgram.module()`` ``exec``s), pytree contexts that import modules by name,
and graph nodes whose target is any attribute of ``torch`` (run at the first forward).

``pt2_hazards`` reads the archive as data — the zip directory, the JSON documents, and the
sample inputs with the weights-only unpickler — and allows only what ``torch.export.save``
writes for a plain ``nn.Module``: raw tensor payloads, shape expressions built from sympy's
numbers, symbols and arithmetic, guards over the inputs' sizes, and nodes that call torch's
operator libraries. Anything else is a hazard, refused unless the user trusts the file
(``trust_pickle``). Written by hand: torch offers no safe loader for this format.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import sympy
import torch
import torch.utils._sympy.functions as torch_sympy

from deploy.core.errors import BadInputError

#: archive entries (below the archive's one root folder) that hold no code
_PLAIN_ENTRIES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
#: graph-node targets that are operators, not arbitrary Python callables
_SAFE_TARGET = re.compile(r"^(torch\.ops\.(aten|prims|higher_order)\.[A-Za-z0-9_.]+|_operator\.[a-z_]+|"
                          r"math\.[a-z_0-9]+|torch\.(sym_[a-z_]+|_sym_[a-z_]+|_assert[a-z_]*|_check[a-z_]*))$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: names a shape expression may call: sympy's numbers, symbols, arithmetic and relations, torch's own functions
_SYMPY_NAMES = frozenset(
    {"Symbol", "Dummy", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "floor",
     "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "StrictGreaterThan",
     "LessThan", "GreaterThan", "And", "Or", "Not", "true", "false", "oo", "zoo", "nan", "Piecewise", "ITE",
     "BooleanTrue", "BooleanFalse", "Tuple", "S", "One", "Zero", "NegativeOne", "Half", "Infinity",
     "NegativeInfinity"}
    | {n for n in dir(torch_sympy) if isinstance(getattr(torch_sympy, n), type)
       and issubclass(getattr(torch_sympy, n), sympy.Basic)}
)
#: tensor methods an input guard may call (``L['x'].size()[0] == 3``)
_GUARD_METHODS = frozenset({"size", "stride", "dim", "numel", "storage_offset"})
_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
              ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.And, ast.Or, ast.BitAnd, ast.BitOr)
_STRUCTURE = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Load, ast.keyword) + _OPERATORS


def _plain_constant(node: ast.AST) -> bool:
    """A number, a bool, None or an identifier-like string (no quotes, no code)."""
    if not isinstance(node, ast.Constant):
        return False
    value = node.value
    return value is None or isinstance(value, (bool, int, float)) or (
        isinstance(value, str) and bool(_IDENTIFIER.match(value)) and "__" not in value)


def _expression_ok(text: str, allow: Any) -> bool:
    """Whether ``text`` parses as one Python expression whose every node is structure, a plain
    constant, or accepted by ``allow(node)``."""
    if any(c in text for c in "\n\r;#\\") or "__" in text:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    return all(isinstance(node, _STRUCTURE) or _plain_constant(node) or allow(node) for node in ast.walk(tree))


def _sympy_node_ok(node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES
    return isinstance(node, ast.Name) and (node.id in _SYMPY_NAMES or bool(re.match(r"^[a-z]+\d+$", node.id)))


def _guard_node_ok(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id == "L" or node.id in _SYMPY_NAMES
    if isinstance(node, ast.Subscript):
        return _plain_constant(node.slice)
    if isinstance(node, ast.Attribute):
        return node.attr in _GUARD_METHODS
    if isinstance(node, ast.Call):
        func = node.func
        return (isinstance(func, ast.Attribute) and func.attr in _GUARD_METHODS) or (
            isinstance(func, ast.Name) and func.id in _SYMPY_NAMES)
    return False


def safe_shape_expression(text: str) -> bool:
    """A serialized shape expression (``Add(Symbol('s16', integer=True), Integer(-2))``) that sympify
    can evaluate without running anything but sympy's constructors."""
    return _expression_ok(text, _sympy_node_ok)


def safe_guard(text: str) -> bool:
    """An input guard (``L['x'].size()[3] == L['x'].size()[2]``) made only of sizes, numbers and comparisons."""
    return _expression_ok(text, _guard_node_ok)


def _walk(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, depth first."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k), v
            yield from _walk(v, str(k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


def _spec_hazards(text: Any, where: str) -> list[str]:
    """A pytree spec (JSON text) that imports a module by name (a defaultdict factory, an enum)."""
    if not isinstance(text, str):
        return []
    if "default_factory_module" in text or "__enum__" in text:
        return [f"{where} imports a module by name while it loads"]
    return []


def _model_hazards(document: dict[str, Any], name: str) -> list[str]:
    found: list[str] = []
    for key, value in _walk(document):
        if key == "expr_str" and not (isinstance(value, str) and safe_shape_expression(value)):
            found.append(f"{name}: a shape expression that is code, not arithmetic ({str(value)[:60]!r})")
        elif key == "guards_code":
            bad = [g for g in (value or []) if not (isinstance(g, str) and safe_guard(g))]
            found += [f"{name}: an input guard that is code, not a size check ({str(g)[:60]!r})" for g in bad]
        elif key == "nodes" and isinstance(value, list):
            targets = {n.get("target") for n in value if isinstance(n, dict)}
            found += [f"{name}: a node calling {t!r}, which is not one of torch's operators"
                      for t in sorted(map(str, targets)) if not _SAFE_TARGET.match(t)]
        elif key in ("in_spec", "out_spec"):
            found += _spec_hazards(value, f"{name}: its {key}")
        elif key == "range_constraints" and isinstance(value, dict):
            found += [f"{name}: a range constraint on {k!r}" for k in value if not safe_shape_expression(str(k))]
    return found


def _payload_hazards(document: dict[str, Any], name: str) -> list[str]:
    found = []
    for fqn, meta in (document.get("config") or {}).items():
        if not isinstance(meta, dict):
            found.append(f"{name}: a malformed entry for {fqn!r}")
        elif meta.get("use_pickle"):
            found.append(f"{fqn!r} is stored as a pickle ({name})")
        elif str(meta.get("path_name", "")).startswith(("custom_obj_", "opaque_obj_")):
            found.append(f"{fqn!r} is a pickled Python object ({name})")
    return found


def _weights_only_hazard(data: bytes, name: str) -> list[str]:
    """A ``torch.save`` payload that the weights-only unpickler refuses (torch would then unpickle it fully)."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal or corruption means torch's fallback would unpickle it
        return [f"{name} holds pickled Python objects"]
    return []


def _entry_hazards(archive: zipfile.ZipFile, full: str, rel: str) -> list[str]:
    if rel in _PLAIN_ENTRIES or rel.startswith("extra/"):  # extra files are read as text
        return []
    if rel.startswith("models/") and rel.endswith(".json"):
        document = _json(archive, full)
        return _model_hazards(document, rel) if document is not None else [f"{rel} is not a JSON object"]
    if rel.startswith(("data/weights/", "data/constants/")):
        tail = rel.split("/", 2)[2]
        if tail.endswith("_config.json"):
            document = _json(archive, full)
            return _payload_hazards(document, rel) if document is not None else [f"{rel} is not a JSON object"]
        if tail.endswith(".pt"):  # the legacy format: one torch.save file of every weight
            return _weights_only_hazard(archive.read(full), rel)
        if tail.startswith(("weight_", "tensor_")):  # raw bytes of one tensor
            return []
    if rel.startswith("data/sample_inputs/") and rel.endswith(".pt"):
        return _weights_only_hazard(archive.read(full), rel)
    if rel.startswith("data/aotinductor/"):
        return [f"{rel} is compiled code (an AOTInductor package)"]
    return [f"{rel} is not part of a plain exported program"]


def _json(archive: zipfile.ZipFile, name: str) -> dict[str, Any] | None:
    try:
        document = json.loads(archive.read(name))
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def pt2_hazards(path: Path) -> list[str]:
    """What in the ``.pt2`` archive at ``path`` would run code while torch loads it (empty: nothing);
    BadInputError (exit 2) when the archive itself cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            roots = {n.split("/", 1)[0] for n in names}
            if len(roots) != 1 or any("/" not in n for n in names):
                return ["entries outside the archive's one root folder (an older or hand-made archive)"]
            found: list[str] = []
            for name in names:
                found += _entry_hazards(archive, name, name.split("/", 1)[1])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise BadInputError(f"{path} is a truncated or corrupt torch.export archive ({exc}): save it again with "
                            "torch.export.save") from exc
    return found
