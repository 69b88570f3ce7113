"""model.pt read/write: the convdeploy format, bare state_dicts, reference checkpoints, other formats.

The convdeploy format (docs/architecture.md) is a dict ``{"format": "convdeploy/1", "arch", "conv",
"conv_kwargs", "num_classes", "input_shape", "state_dict", "meta"}`` read with
``torch.load(weights_only=True)``. A whole pickled module is read only when the user
passes ``trust_pickle=True`` (unpickling runs code from the file). Checkpoints of the
papers' reference code (SCNet and SCNet-v1d, SPConv's resnet_sp, DO-Conv) are recognised
from their keys by the conv kinds that know them and loaded strictly into our zoo models,
whose names mirror theirs. A bare state_dict of the user's own class loads strictly into
``model_class`` built with ``model_args``; ``.pt2`` ExportedPrograms load, TorchScript
archives are refused with what to do instead (``deploy.load.formats``). An in-memory module
(the Python API) becomes a ``LoadedModel`` with ``loaded_from_module``.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploy.core.atomic import atomic_path, sha256_file, write_through
from deploy.core.errors import BadInputError, LoadOptionsNeededError, first_line
from deploy.core.limits import MAX_INPUT_ELEMENTS, MAX_SIDE, check_input_elements, check_input_size
from deploy.load.formats import (
    archive_kind,
    cwd_importable,
    load_exported_program,
    pickle_import_hint,
    refuse_torchscript,
)
from deploy.load.module import LoadedModel, check_finite_weights, loaded_module
from deploy.load.state_dict import build_zoo_model, load_state_dict, options_held_by_weights, strict_load, unwrap_state_dict
from deploy.models.resnet import ZooNet

FORMAT = "convdeploy/1"


def save_checkpoint(model: ZooNet, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write a zoo model as a convdeploy/1 checkpoint, atomically."""
    payload = {
        "format": FORMAT,
        "arch": model.arch,
        "conv": model.conv,
        "conv_kwargs": dict(model.conv_kwargs),
        "num_classes": int(model.num_classes),
        "input_shape": list(model.input_shape),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    with atomic_path(path) as tmp:
        buffer = io.BytesIO()
        torch.save(payload, buffer)  # serialised in memory: a full disk is then an OSError of our own write
        write_through(tmp, buffer.getbuffer(), path)
    return Path(path)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise BadInputError(f"{path}: no such file; check the path (create one with `deploy zoo create`)")
    if path.is_dir():
        raise BadInputError(f"{path} is a directory, not a checkpoint file: point to the model.pt inside it")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path} is empty (0 bytes): the file was not written completely; save it again")


def _check_archive(path: Path) -> str | None:
    """The kind of torch archive ``path`` is (``deploy.load.formats.archive_kind``); truncated and TorchScript refused."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    is_zip_header = head == b"PK\x03\x04"
    if not is_zip_header and not head.startswith(b"\x80"):  # neither a zip archive nor a pickle (protocol >= 2)
        raise BadInputError(f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle: it "
                            f"starts with {head!r}); point to a model.pt written by torch.save or `deploy zoo create`")
    if is_zip_header and not zipfile.is_zipfile(path):
        raise BadInputError(
            f"{path} is truncated or corrupt (a torch.save zip archive without its central directory: the write was "
            "cut short); save the checkpoint again"
        )
    kind = archive_kind(path)
    if kind == "torchscript":
        raise refuse_torchscript(path)
    return kind


def _blocked_global(exc: BaseException) -> bool:
    """Whether torch's weights-only unpickler stopped at a global it does not allow (a class, a
    function, a blocked module): the file holds pickled Python objects."""
    text = str(exc).lower()
    return "unsupported global" in text or ("global" in text and "is blocked" in text)


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _blocked_global(exc):
            raise BadInputError(
                f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a readable pickle); "
                "point to a model.pt written by torch.save or `deploy zoo create`"
            ) from exc
        if not trust_pickle:
            raise LoadOptionsNeededError(
                f"{path} holds pickled Python objects (a whole module?); unpickling runs code from the file",
                "allow it with `trust_pickle` only if you trust its source, or save model.state_dict() instead"
            ) from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes the unpickler raise anything
        raise BadInputError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt: {first_line(exc, 200)}); "
            "save it again with torch.save"
        ) from exc
    warnings.warn(f"loading {path} with pickle: this runs code from the file", stacklevel=3)
    try:
        with cwd_importable():
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - arbitrary code in the pickle may raise anything
        hint = pickle_import_hint(exc)
        raise BadInputError(f"{path}: unpickling failed ({first_line(exc, 200)})" + (f"; {hint}" if hint else "")) from exc



def load_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    conv: str | None = None,
    conv_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    model_class: str | None = None,
    model_args: Any = None,
) -> LoadedModel:
    """Read ``path`` into an eval-mode model; every failure is a BadInputError naming the fix."""
    path = Path(path)
    _check_readable(path)
    digest = sha256_file(path)
    if model_class is not None and (arch is not None or conv is not None):
        raise BadInputError("give `model_class` (your own class) or `arch`/`conv` (a zoo model), not both")
    if _check_archive(path) == "pt2":
        return _load_exported_program(path, digest, arch, conv, model_class, trust_pickle)
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return loaded_module(obj, "pickle", digest, str(path))
    if not isinstance(obj, dict):
        raise BadInputError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or an nn.Module")
    if obj.get("format") == FORMAT:
        for option, given, recorded in (("arch", arch, obj.get("arch")), ("conv", conv, obj.get("conv")),
                                        ("model_class", model_class, None)):
            if given is not None and given != recorded:
                raise BadInputError(
                    f"{path} is a convdeploy checkpoint of {obj.get('arch')} (conv={obj.get('conv')}) but "
                    f"`{option}` {given} was given: drop `{option}` (it is only for bare state_dicts)"
                )
        return _load_convdeploy(obj, path, digest)
    return load_state_dict(unwrap_state_dict(obj), path, digest, arch, conv, conv_kwargs, model_class, model_args)


def _load_exported_program(path: Path, digest: str, arch: str | None, conv: str | None, model_class: str | None,
                           trust_pickle: bool) -> LoadedModel:
    """A ``.pt2`` ExportedProgram: it carries its own program, so the options that say what a state_dict is
    do not apply; one 4-D (NCHW) input."""
    given = [name for name, value in (("arch", arch), ("conv", conv), ("model_class", model_class)) if value]
    if given:
        raise BadInputError(f"{path} is a torch.export archive, which carries its own program: drop "
                            f"{', '.join(f'`{g}`' for g in given)} (they describe bare state_dicts)")
    module, dims = load_exported_program(path, trust_pickle)
    if dims is not None and len(dims) != 4:
        shown = "x".join("?" if d is None else str(d) for d in dims)
        raise BadInputError(f"{path} takes a {len(dims)}-D input ({shown}): convdeploy exports image models of one "
                            "NCHW (4-D) input")
    loaded = loaded_module(module, "exported-program", digest, str(path))
    loaded.program_dims = dims
    if dims is not None and None not in dims[1:]:
        loaded.input_shape = tuple(int(d) for d in dims[1:] if d is not None)
    return loaded


def _field(obj: dict, name: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if name not in obj:
        raise BadInputError(f"{path}: the convdeploy checkpoint has no {name!r} field: save it again")
    value = obj[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        expected = " or ".join(k.__name__ for k in _kinds(kind))
        raise BadInputError(f"{path}: the convdeploy checkpoint's {name!r} field holds a {type(value).__name__} where "
                            f"a {expected} belongs: the file is malformed; save it again")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _tensors(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` field: names to tensors, or a one-line refusal."""
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        raise BadInputError(f"{path}: the convdeploy checkpoint's 'state_dict' entry {bad!r} is not a named tensor: "
                            "the file is malformed; save it again")
    return state


def _input_shape(value: Any, path: Path) -> tuple[int, int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise BadInputError(f"{path}: the checkpoint's input_shape {value!r} is not (C, H, W) with positive sizes: "
                            "save it again")
    try:
        check_input_size("input_shape", value[1:])
        check_input_elements(value, "input_shape")
    except BadInputError:  # the limits' own line would name an option the user did not give
        raise BadInputError(f"{path}: the checkpoint records an input shape of {'x'.join(map(str, value))}, "
                            f"larger than convdeploy runs ({MAX_SIDE} pixels a side, {MAX_INPUT_ELEMENTS:,} elements): "
                            "save it again with a smaller input_shape") from None
    return (value[0], value[1], value[2])


def _load_convdeploy(obj: dict, path: Path, digest: str) -> LoadedModel:
    arch, conv = _field(obj, "arch", str, path), _field(obj, "conv", str, path)
    kwargs = dict(_field(obj, "conv_kwargs", dict, path)) if obj.get("conv_kwargs") is not None else {}
    num_classes = _field(obj, "num_classes", int, path)
    input_shape = _input_shape(_field(obj, "input_shape", (list, tuple), path), path)
    state = _tensors(_field(obj, "state_dict", dict, path), path)
    model = build_zoo_model(arch, conv, kwargs, num_classes, input_shape)
    strict_load(model, state, f"{arch} (conv={conv})")
    options_held_by_weights(model, {})
    check_finite_weights(model)
    model.eval()
    meta = dict(_field(obj, "meta", dict, path)) if obj.get("meta") is not None else {}
    return LoadedModel(model, "convdeploy", digest, arch, conv, dict(model.conv_kwargs), num_classes, input_shape, meta)
