"""The package's import graph: layers only look down, no cycles, function-level imports included.

Every module of deploy/, exporters/ and validators/ is parsed (never imported); each import
of another project module is an edge. The layer order is the one docs/architecture.md
documents. Function-local imports are allowed only for heavy or optional third-party
backends, each with a comment saying why — and for exactly the project imports of
``LAZY_PROJECT_IMPORTS``, each keeping torch out of a start-up that does not need it: the
package ``deploy/__init__.py``'s PEP 562 ``__getattr__`` imports ``deploy.api`` on first use of
the API's names (``import deploy`` and ``deploy.core.errors`` stay torch-free), and the torch-free
commands on ONNX files import their torch side only for a .pt file (``deploy inspect``'s
checkpoint record, ``deploy bench``'s PyTorch backend).
"""

from __future__ import annotations

import ast
import fnmatch
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("deploy", "exporters", "validators")

#: lowest first, in the order data flows; a module may import from its own layer or any layer below it.
#: Patterns, so a new module in a package needs no edit here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("deploy.version", "deploy.core", "deploy.core.*")),
    ("layers", ("deploy.layers", "deploy.layers.*")),
    ("models", ("deploy.models", "deploy.models.*")),
    ("data", ("deploy.data", "deploy.data.*")),
    ("load", ("deploy.load", "deploy.load.*")),
    ("fold", ("deploy.fold", "deploy.fold.*")),
    ("runtimes", ("validators", "validators.runtimes", "validators.runtimes.*")),
    ("exporters / checks", ("exporters", "exporters.*", "validators.*")),
    ("pipeline", ("deploy.pipeline", "deploy.pipeline.*")),
    ("bench / evaluate / serving", ("deploy.bench", "deploy.bench.*", "deploy.evaluation", "deploy.evaluation.*",
                                    "deploy.serving", "deploy.serving.*")),
    ("quantize", ("deploy.quantize", "deploy.quantize.*")),
    ("claims / matrix", ("deploy.claims", "deploy.claims.*", "deploy.matrix", "deploy.matrix.*")),
    ("CLI / API", ("deploy", "deploy.api", "deploy.cli", "deploy.commands", "deploy.commands.*")),
]
#: the function-level project imports allowed: (module, function, imported module)
LAZY_PROJECT_IMPORTS = (
    ("deploy", "__getattr__", "deploy.api"),
    ("deploy.commands.inspect", "_inspect_checkpoint", "deploy.commands.inspect_checkpoint"),
    ("deploy.bench.runtime", "open_runtime", "deploy.bench.torch_model"),
    ("deploy.commands.bench", "_torch_options", "deploy.bench.torch_model"),
)
#: third-party modules a function may import lazily (heavy or optional backends)
LAZY_OK = ("tensorrt", "polygraphy", "matplotlib", "onnxsim", "torch", "onnxconverter_common", "tritonclient")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def layer_of(module: str) -> int:
    """The first layer whose patterns match ``module`` (exact names before wildcards)."""
    for exact in (True, False):
        for i, (_, patterns) in enumerate(LAYERS):
            for pat in patterns:
                if ("*" in pat) != (not exact):
                    continue
                if module == pat or (not exact and fnmatch.fnmatchcase(module, pat)):
                    return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def _targets(node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return [n for n in names if n.split(".")[0] in PACKAGES and n in modules]


def imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import statement of ``path``."""
    tree = ast.parse(path.read_text())
    local: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.extend((t, node.lineno, id(node) in local) for t in _targets(node, modules))
    return out


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: {t for t, _, _ in imports(p, modules) if t != m} for m, p in modules.items()}


def test_every_module_is_in_a_layer():
    for m in all_modules():
        layer_of(m)


def upward_imports(root: Path = ROOT) -> list[str]:
    """Every import of a module from a higher layer, as ``file:line: what``."""
    modules = all_modules(root)
    bad = []
    for m, path in modules.items():
        for target, line, _ in imports(path, modules):
            if layer_of(target) > layer_of(m):
                bad.append(f"{path.relative_to(root)}:{line}: {m} ({LAYERS[layer_of(m)][0]}) imports "
                           f"{target} ({LAYERS[layer_of(target)][0]})")
    return bad


def test_layers_only_look_down():
    bad = upward_imports()
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def _comment_lines(path: Path) -> dict[int, str]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.start[0]: t.string for t in tokens if t.type == tokenize.COMMENT}


def _is_the_lazy_api_import(module: str, fn: ast.FunctionDef | ast.AsyncFunctionDef,
                            node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> bool:
    """One of ``LAZY_PROJECT_IMPORTS`` (e.g. ``from deploy import api`` inside ``deploy/__init__.py``'s
    ``__getattr__``), nothing else."""
    return any(module == owner and fn.name == function and _targets(node, modules) == [target]
               for owner, function, target in LAZY_PROJECT_IMPORTS)


def lazy_import_violations(root: Path = ROOT) -> list[str]:
    modules = all_modules(root)
    bad = []
    for module, path in modules.items():
        comments = _comment_lines(path)
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in (n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                where = f"{path.relative_to(root)}:{node.lineno}"
                allowed = _is_the_lazy_api_import(module, fn, node, modules) and fn in tree.body
                if not allowed and any(n.split(".")[0] not in LAZY_OK for n in names):
                    bad.append(f"{where}: function-level import of {names} (only {LAZY_OK} may be lazy)")
                elif len(comments.get(node.lineno, "")) < 20:
                    bad.append(f"{where}: a lazy import needs a comment saying why")
    return bad


def test_function_level_imports_are_only_heavy_backends_with_a_reason():
    bad = lazy_import_violations()
    assert not bad, "\n".join(bad)


def test_the_lazy_api_import_is_the_only_exception(tmp_path):
    """The exception is exactly the package's ``__getattr__`` importing ``deploy.api``: the same import in
    another function, or another project import in ``__getattr__``, is still caught."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "deploy" / "api.py").write_text("")
    (tmp_path / "deploy" / "cli.py").write_text("")
    reason = "  # noqa: PLC0415 - lazy on purpose: keeps import deploy torch-free"
    (tmp_path / "deploy" / "__init__.py").write_text(
        f"def __getattr__(name):\n    from deploy import api{reason}\n\n"
        f"def main():\n    from deploy import api{reason}\n")
    (tmp_path / "exporters" / "__init__.py").write_text(f"def __getattr__(name):\n    from deploy import cli{reason}\n")
    (tmp_path / "validators" / "__init__.py").write_text("")
    assert lazy_import_violations(tmp_path) == [
        "deploy/__init__.py:5: function-level import of ['deploy'] (only " + str(LAZY_OK) + " may be lazy)",
        "exporters/__init__.py:2: function-level import of ['deploy'] (only " + str(LAZY_OK) + " may be lazy)",
    ]


def test_import_deploy_does_not_import_torch():
    """``import deploy``, ``deploy.core.errors`` and ``deploy.__version__`` stay torch-free; the API names load it."""
    code = ("import sys, deploy, deploy.core.errors; assert 'torch' not in sys.modules, 'torch imported'; "
            "print(deploy.__version__); from deploy import export, fold_model, build_model, ExportResult; "
            "assert 'torch' in sys.modules and callable(export) and callable(fold_model) and callable(build_model)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import deploy

        deploy.nope  # noqa: B018 - the attribute access is the test


_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def _docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_library_messages_name_no_cli_flags():
    """Only the CLI layer knows flag names; the library names its parameters in backticks."""
    bad = []
    for m, path in all_modules().items():
        if layer_of(m) == len(LAYERS) - 1:
            continue
        tree = ast.parse(path.read_text())
        docs = _docstring_ids(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                found = _FLAG.findall(node.value)
                if found:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {found}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    """The layer rule really fires: a foundation importing the CLI inside a function is caught."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "deploy" / "core").mkdir()
    (tmp_path / "deploy" / "cli.py").write_text("from deploy.core.errors import X\n")
    (tmp_path / "deploy" / "core" / "errors.py").write_text("def f():\n    from deploy.cli import app\n")
    assert upward_imports(tmp_path) == ["deploy/core/errors.py:2: deploy.core.errors (core) imports deploy.cli (CLI / API)"]
    assert layer_of("validators.parity") > layer_of("validators.runtimes.onnxruntime")
