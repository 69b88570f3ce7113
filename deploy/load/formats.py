"""Model files other than a convdeploy checkpoint: what they are, and how each becomes an ``nn.Module``.

* ``torch.export.save`` archives (``.pt2``): ``torch.export.load(path).module()``. The
  program's graph is fixed when it is exported, so one exported in training mode (BatchNorm
  on batch statistics, live dropout) is refused; the unlifted module is then marked as an
  inference module (``eval()`` is not supported on it, and would change nothing).
* TorchScript archives (``torch.jit.save``) are recognised and refused with what to do
  instead: their modules are compiled code, not the ``nn.Module`` tree folding works on.
* A user's own class, ``package.module:Class`` built with JSON arguments, into which a bare
  state_dict is loaded strictly (``deploy.load.checkpoint``); like ``uvicorn main:app``, the current
  directory is importable while the class is imported.
* A pickled module whose class cannot be imported: the hint names the module to put on
  ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from deploy.core.errors import BadInputError, LoadOptionsNeededError, first_line
from deploy.load.pt2_audit import pt2_hazards


def archive_kind(path: Path) -> str | None:
    """``"pt2"``, ``"torchscript"`` or ``"torch.save"`` for a zip archive written by torch, else None."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            fmt = next((n for n in names if n.endswith("/archive_format") or n == "archive_format"), None)
            if fmt is not None and archive.read(fmt).strip() == b"pt2":
                return "pt2"
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise BadInputError(f"{path} is a truncated or corrupt zip archive ({exc}): save it again "
                            "(torch.save or torch.export.save)") from exc
    if any("/code/__torch__/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "torch.save"


def refuse_torchscript(path: Path) -> BadInputError:
    """The exit-2 error for a TorchScript archive, saying what to give instead."""
    return BadInputError(
        f"{path} is a TorchScript archive (torch.jit.save): its modules are compiled code, so nothing can be folded "
        "or checked layer by layer; give the eager model instead: torch.save(model.state_dict()) with "
        "`model_class`, or a torch.export.save(torch.export.export(model, (x,))) .pt2 file"
    )


def _training_ops(program: Any) -> list[str]:
    """Ops of the exported graph that run in training mode (an argument ``training``/``train`` is True)."""
    found = []
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for i, arg in enumerate(schema.arguments):
            if arg.name in ("training", "train"):
                value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name, arg.default_value)
                if value is True:
                    found.append(str(node.target))
    return sorted(set(found))


def load_exported_program(path: Path, trust_pickle: bool = False) -> tuple[nn.Module, tuple[int | None, ...] | None]:
    """The module of a ``.pt2`` ExportedProgram and its input dims (None where a dim is symbolic).

    Unless ``trust_pickle``, the archive is audited first (``deploy.load.pt2_audit``): anything in it
    that torch would run while loading (pickles, compiled code, code in shape expressions or
    guards, non-operator calls) is refused, exit 2, before torch reads it.
    """
    if not trust_pickle:
        hazards = pt2_hazards(path)
        if hazards:
            more = f" (+{len(hazards) - 2} more)" if len(hazards) > 2 else ""
            raise LoadOptionsNeededError(f"{path} is a torch.export archive that would run code from the file while "
                                         f"it loads: {'; '.join(hazards[:2])}{more}",
                                         "allow it with `trust_pickle` only if you trust its source, or export the "
                                         "model again with torch.export.save")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged archive makes the deserializer raise anything
        raise BadInputError(f"{path} is a torch.export archive that cannot be loaded ({first_line(exc, 200)}): "
                            "save it again with torch.export.save") from exc
    training = _training_ops(program)
    if training:
        raise BadInputError(f"{path} was exported in training mode ({', '.join(training)} run with training=True): "
                            "call model.eval() before torch.export.export and save it again")
    module = program.module()
    for sub in module.modules():  # the graph is fixed in eval form (checked above); eval() is unsupported here
        sub.training = False
    user_inputs = set(program.graph_signature.user_inputs)
    values = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    dims = None
    if len(values) == 1 and isinstance(values[0], torch.Tensor):
        dims = tuple(d if isinstance(d, int) else None for d in values[0].shape)
    return module, dims


@contextlib.contextmanager
def cwd_importable() -> Iterator[None]:
    """The current directory on ``sys.path`` while the block runs (a console script does not have it):
    ``--model-class mynet:Net`` and a pickled ``mynet.Net`` then import from where the user stands."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def model_class_file(spec: str | None) -> Path | None:
    """The source file of the module ``package.module:Class`` names (an input of the run, which no output
    may overwrite); None when it cannot be found (importing it then says why)."""
    module_name = (spec or "").partition(":")[0]
    if not module_name:
        return None
    try:
        with cwd_importable():
            found = importlib.util.find_spec(module_name)
    except (Exception, SystemExit):  # noqa: BLE001 - finding a submodule imports its package: user code
        return None
    origin = found.origin if found is not None else None
    return Path(origin) if origin and origin not in ("built-in", "frozen") else None


def import_model_class(spec: str) -> type[nn.Module]:
    """``package.module:Class`` -> the class (an ``nn.Module`` subclass), or a BadInputError saying what to fix."""
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise BadInputError(f"`model_class` must be package.module:Class, got {spec!r}")
    try:
        with cwd_importable():
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInputError(f"`model_class` {spec}: cannot import {module_name} ({first_line(exc, 200)}); "
                            f"{_path_hint(module_name)}") from exc
    except SystemExit as exc:
        raise BadInputError(f"`model_class` {spec}: importing {module_name} called sys.exit({exc.code!r}); a module "
                            "that defines a model must not exit when imported") from exc
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while it is imported
        raise BadInputError(f"`model_class` {spec}: importing {module_name} failed ({type(exc).__name__}: "
                            f"{first_line(exc, 200)}); fix the module") from exc
    found: Any = module
    for part in class_name.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise BadInputError(f"`model_class` {spec}: {module_name} has no {class_name}; check the name")
    if not (inspect.isclass(found) and issubclass(found, nn.Module)):
        raise BadInputError(f"`model_class` {spec} is not an nn.Module subclass")
    return found


def parse_model_args(model_args: Any) -> tuple[list[Any], dict[str, Any]]:
    """JSON text (or the already parsed value): an object gives keyword arguments, an array positional ones."""
    value = model_args
    if isinstance(model_args, str):
        try:
            value = json.loads(model_args)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"`model_args` is not valid JSON ({exc.msg} at position {exc.pos}): "
                                "give an object like '{\"num_classes\": 10}'") from exc
    if value is None:
        return [], {}
    if isinstance(value, dict):
        return [], dict(value)
    if isinstance(value, list):
        return list(value), {}
    raise BadInputError(f"`model_args` must be a JSON object (keyword arguments) or array (positional ones), "
                        f"got {type(value).__name__}")


def build_model_class(spec: str, model_args: Any) -> nn.Module:
    """Import and construct the user's class with ``model_args``."""
    cls = import_model_class(spec)
    args, kwargs = parse_model_args(model_args)
    try:
        return cls(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's constructor may raise anything
        raise BadInputError(f"`model_class` {spec}({_call(args, kwargs)}) failed ({type(exc).__name__}: "
                            f"{first_line(exc, 200)}): check `model_args`") from exc


def pickle_import_hint(exc: BaseException) -> str | None:
    """For a pickled module whose class cannot be imported: what to put on PYTHONPATH."""
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing is None and isinstance(exc, AttributeError) and "Can't get attribute" in str(exc):
        return ("the class the module was pickled with no longer exists under that name: restore it, or save "
                "model.state_dict() and load it with `model_class`")
    if missing is None:
        return None
    return f"its class lives in the module {missing}, which cannot be imported here: {_path_hint(missing)}"


def _path_hint(module_name: str) -> str:
    top = module_name.split(".")[0]
    return (f"run from the directory that holds {top} (or {top}.py), or add that directory to PYTHONPATH "
            "(PYTHONPATH=/path/to/code)")


def _call(args: list[Any], kwargs: dict[str, Any]) -> str:
    return ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])

