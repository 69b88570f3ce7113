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

import hashlib
import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploy.core.atomic import atomic_path, sha256_file, write_through
from deploy.core.errors import BadInputError, LoadOptionsNeededError, first_line
from deploy.core.limits import check_input_elements, check_input_size
from deploy.layers.registry import ConvKind, conv_kind, conv_kinds
from deploy.load.formats import (
    archive_kind,
    build_model_class,
    cwd_importable,
    load_exported_program,
    pickle_import_hint,
    refuse_torchscript,
)
from deploy.models.resnet import ZooNet
from deploy.models.zoo import arch_from_keys, build_model, named_models_of

FORMAT = "convdeploy/1"


@dataclass
class LoadedModel:
    """A model ready for folding, with what is known about where it came from."""

    model: nn.Module
    # convdeploy | state_dict | model-class | reference-scnet | reference-spconv | reference-doconv | pickle
    # | exported-program | python (an in-memory module)
    source: str
    sha256: str
    arch: str | None = None
    conv: str | None = None
    conv_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    program_dims: tuple[int | None, ...] | None = None  # an ExportedProgram's input dims (None: symbolic)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "arch": self.arch,
            "conv": self.conv,
            "conv_kwargs": self.conv_kwargs,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape) if self.input_shape else None,
        }


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



def _unwrap_state_dict(obj: dict) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "net"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError("the checkpoint is a dict but not a state_dict (its values are not all tensors)")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}


def recognise_reference(state: dict[str, torch.Tensor]) -> tuple[str, str, str, dict[str, Any]] | None:
    """(source, arch, conv, conv_kwargs) for a checkpoint of a kind's reference code, else None.

    Each conv kind that knows its reference code's keys recognises them (``ConvKind.recognise``);
    the base arch follows from the blocks per stage, and among the kind's named models of that
    arch (SCNet-50 and SCNet-50-v1d) the one whose keys and shapes the checkpoint has.
    """
    for kind in conv_kinds():
        kwargs = kind.recognise(state) if kind.recognise is not None else None
        if kwargs is not None:
            arch = arch_from_keys(set(state))
            return f"reference-{kind.reference}", _named_model(kind, arch, state, kwargs), kind.name, kwargs
    return None


def _named_model(kind: ConvKind, base: str, state: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> str:
    """The kind's named model of ``base`` whose state_dict has the checkpoint's keys and shapes (built on
    the meta device), else its main name (whose strict load then lists what does not fit)."""
    names = named_models_of(kind, base)
    if len(names) < 2:
        return names[0] if names else base
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in names:
        with torch.device("meta"):
            model = build_model(name, kind.name, num_classes=_num_classes(state), **kwargs)
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes:
            return name
    return names[0]


_FIT_HINT = "give the `arch`, `conv` and `conv_kwargs` the weights were trained with, or re-save the checkpoint from its model"
_CLASS_HINT = "give the `model_args` the weights were trained with, or the class they were saved from"


def _strict_load(model: nn.Module, state: dict[str, torch.Tensor], what: str, hint: str = _FIT_HINT) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise BadInputError(
            f"the weights do not fit {what}: missing keys {_short(missing)}; unexpected keys {_short(unexpected)}; "
            f"{hint}"
        )
    wrong = [f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)})"
             for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise BadInputError(f"the weights do not fit {what}: shape mismatch for {_short(wrong)}; {hint}")
    model.load_state_dict(state, strict=True)


def _short(items: list[str], limit: int = 8) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")


def check_finite_weights(model: nn.Module) -> None:
    """Refuse weights or buffers holding NaN or Inf (a diverged run or a corrupt file)."""
    bad = [
        name
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise BadInputError(
            f"NaN or Inf in the weights ({_short(bad)}): the checkpoint is from a diverged or corrupt run; "
            "export an earlier checkpoint or retrain"
        )


def check_eval_mode(model: nn.Module, what: str) -> None:
    """BadInputError unless ``model`` and every submodule are in eval mode (BatchNorm and dropout in
    training mode make no fold exact and no two runs equal)."""
    training = [name or "(root)" for name, m in model.named_modules() if m.training]
    if training:
        shown = ", ".join(training[:3]) + (f" (+{len(training) - 3} more)" if len(training) > 3 else "")
        raise BadInputError(f"{what} has modules in training mode ({shown}): call model.eval() first (BatchNorm and "
                            "dropout behave differently in training mode, and no fold is exact)")


def _build(arch: str, conv: str, conv_kwargs: dict[str, Any], num_classes: int | None,
           input_shape: tuple[int, int, int] | None = None) -> ZooNet:
    try:
        return build_model(arch, conv, num_classes=num_classes, input_shape=input_shape, **conv_kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise BadInputError(f"cannot build {arch} with conv={conv}: {exc}") from exc


def _num_classes(state: dict[str, torch.Tensor]) -> int | None:
    fc = state.get("fc.weight")
    return int(fc.shape[0]) if fc is not None else None


def module_sha256(model: nn.Module) -> str:
    """sha256 over an in-memory module's state_dict (names, dtypes, shapes, values): its identity in reports."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def check_module(model: nn.Module, what: str) -> None:
    """What a module must be before convdeploy folds and exports it: in eval mode, holding real float32
    weights, with BatchNorms that use running statistics, all finite (BadInputError naming the fix)."""
    check_eval_mode(model, what)
    params = list(model.named_parameters())
    if any(p.is_meta for _, p in params):
        raise BadInputError(f"{what} holds weights on the meta device (shapes without values): load real weights "
                            "first (e.g. load_state_dict(..., assign=True))")
    other = sorted({str(p.dtype) for _, p in params if p.is_floating_point() and p.dtype != torch.float32})
    if other:
        raise BadInputError(f"{what} holds {', '.join(other)} weights: convdeploy folds and exports float32 models "
                            "(and builds fp16 engines from them); call model.float() first")
    batch_stats = [name for name, m in model.named_modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats]
    if batch_stats:
        raise BadInputError(f"{what} has BatchNorm layers without running statistics ({', '.join(batch_stats[:3])}: "
                            "track_running_stats=False): they normalise each batch by its own statistics even in eval "
                            "mode, so an image's output depends on the others; give them running statistics first")
    check_finite_weights(model)


def _loaded_module(model: nn.Module, source: str, digest: str, what: str) -> LoadedModel:
    check_module(model, what)
    return LoadedModel(model, source, digest, input_shape=getattr(model, "input_shape", None))


def loaded_from_module(model: nn.Module) -> LoadedModel:
    """An in-memory module (the Python API) as a ``LoadedModel``; it is not copied and never modified."""
    if not isinstance(model, nn.Module):
        raise BadInputError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    check_module(model, "`model`")
    return LoadedModel(model, "python", module_sha256(model), input_shape=getattr(model, "input_shape", None))


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
        return _loaded_module(obj, "pickle", digest, str(path))
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
    return _load_state_dict(_unwrap_state_dict(obj), path, digest, arch, conv, conv_kwargs, model_class, model_args)


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
    loaded = _loaded_module(module, "exported-program", digest, str(path))
    loaded.program_dims = dims
    if dims is not None and None not in dims[1:]:
        loaded.input_shape = tuple(int(d) for d in dims[1:] if d is not None)
    return loaded


def _options_held_by_weights(model: ZooNet, given: dict[str, Any]) -> None:
    """Record the kind's options as the loaded weights hold them (IC's alpha is an initial value that
    training changes): a given value the weights contradict is refused, a value that differs per layer is
    not recorded."""
    kind = conv_kind(model.conv)
    options = dict(model.conv_kwargs)
    for opt in kind.options:
        values = {float(getattr(m, opt.weight)) for m in model.modules() if opt.weight and isinstance(m, kind.module)}
        if not values:
            continue
        held = values.pop() if len(values) == 1 else None
        if opt.name in given and given[opt.name] != held:
            shown = f"{opt.name}={held:g}" if held is not None else f"a {opt.name} per layer"
            raise BadInputError(f"`conv_kwargs` {opt.name}={given[opt.name]} was given, but the weights hold {shown}: "
                                f"drop {opt.name} (it is the initial value training starts from)")
        if held is None:
            options.pop(opt.name, None)
        else:
            options[opt.name] = held
    model.conv_kwargs = options


def _load_state_dict(state: dict[str, torch.Tensor], path: Path, digest: str, arch: str | None, conv: str | None,
                     conv_kwargs: dict[str, Any] | None, model_class: str | None, model_args: Any) -> LoadedModel:
    """A bare state_dict into the user's ``model_class``, a recognised reference model, or ``arch``/``conv``."""
    if model_class is not None:
        own = build_model_class(model_class, model_args)
        _strict_load(own, state, model_class, hint=_CLASS_HINT)
        own.eval()
        loaded = _loaded_module(own, "model-class", digest, model_class)
        loaded.meta = {"model_class": model_class}
        return loaded
    ref = recognise_reference(state) if arch is None and conv is None else None
    if ref is not None:
        source, arch, conv, kwargs = ref
    elif arch is None or conv is None:
        raise LoadOptionsNeededError(f"{path} is a bare state_dict", "give `arch` and `conv` (and the kind's "
                                     "`conv_kwargs`) for a zoo model, or `model_class` for your own class, to say "
                                     "what it is")
    else:
        source, kwargs = "state_dict", dict(conv_kwargs or {})
    model = _build(arch, conv, kwargs, _num_classes(state))
    _strict_load(model, state, f"{arch} (conv={conv})")
    _options_held_by_weights(model, kwargs if source == "state_dict" else {})
    check_finite_weights(model)
    model.eval()
    return LoadedModel(model, source, digest, arch, conv, dict(model.conv_kwargs), model.num_classes,
                       model.input_shape)


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
    check_input_size("input_shape", value[1:])
    check_input_elements(value, "input_shape")
    return (value[0], value[1], value[2])


def _load_convdeploy(obj: dict, path: Path, digest: str) -> LoadedModel:
    arch, conv = _field(obj, "arch", str, path), _field(obj, "conv", str, path)
    kwargs = dict(_field(obj, "conv_kwargs", dict, path)) if obj.get("conv_kwargs") is not None else {}
    num_classes = _field(obj, "num_classes", int, path)
    input_shape = _input_shape(_field(obj, "input_shape", (list, tuple), path), path)
    state = _tensors(_field(obj, "state_dict", dict, path), path)
    model = _build(arch, conv, kwargs, num_classes, input_shape)
    _strict_load(model, state, f"{arch} (conv={conv})")
    _options_held_by_weights(model, {})
    check_finite_weights(model)
    model.eval()
    meta = dict(_field(obj, "meta", dict, path)) if obj.get("meta") is not None else {}
    return LoadedModel(model, "convdeploy", digest, arch, conv, dict(model.conv_kwargs), num_classes, input_shape, meta)
