"""Bare state_dicts: the reference checkpoints the conv kinds recognise, a zoo model named by ``arch`` /
``conv``, or the user's own ``model_class``; loaded strictly, with the options the weights hold recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploy.core.errors import BadInputError, LoadOptionsNeededError
from deploy.layers.registry import ConvKind, conv_kind, conv_kinds
from deploy.load.formats import (
    build_model_class,
)
from deploy.load.module import LoadedModel, check_finite_weights, loaded_module, short_list
from deploy.models.resnet import ZooNet
from deploy.models.zoo import arch_from_keys, build_model, named_models_of


def unwrap_state_dict(obj: dict) -> dict[str, torch.Tensor]:
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


def strict_load(model: nn.Module, state: dict[str, torch.Tensor], what: str, hint: str = _FIT_HINT) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise BadInputError(
            f"the weights do not fit {what}: missing keys {short_list(missing)}; unexpected keys {short_list(unexpected)}; "
            f"{hint}"
        )
    wrong = [f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)})"
             for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise BadInputError(f"the weights do not fit {what}: shape mismatch for {short_list(wrong)}; {hint}")
    model.load_state_dict(state, strict=True)


def build_zoo_model(arch: str, conv: str, conv_kwargs: dict[str, Any], num_classes: int | None,
           input_shape: tuple[int, int, int] | None = None) -> ZooNet:
    try:
        return build_model(arch, conv, num_classes=num_classes, input_shape=input_shape, **conv_kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise BadInputError(f"cannot build {arch} with conv={conv}: {exc}") from exc


def _num_classes(state: dict[str, torch.Tensor]) -> int | None:
    fc = state.get("fc.weight")
    return int(fc.shape[0]) if fc is not None else None


def options_held_by_weights(model: ZooNet, given: dict[str, Any]) -> None:
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


def load_state_dict(state: dict[str, torch.Tensor], path: Path, digest: str, arch: str | None, conv: str | None,
                     conv_kwargs: dict[str, Any] | None, model_class: str | None, model_args: Any) -> LoadedModel:
    """A bare state_dict into the user's ``model_class``, a recognised reference model, or ``arch``/``conv``."""
    if model_class is not None:
        own = build_model_class(model_class, model_args)
        strict_load(own, state, model_class, hint=_CLASS_HINT)
        own.eval()
        loaded = loaded_module(own, "model-class", digest, model_class)
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
    model = build_zoo_model(arch, conv, kwargs, _num_classes(state))
    strict_load(model, state, f"{arch} (conv={conv})")
    options_held_by_weights(model, kwargs if source == "state_dict" else {})
    check_finite_weights(model)
    model.eval()
    return LoadedModel(model, source, digest, arch, conv, dict(model.conv_kwargs), model.num_classes,
                       model.input_shape)


