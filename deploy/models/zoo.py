"""The model zoo: ``build_model(arch, conv, ...)``, its archs, and the papers' figures for each.

Every built model carries ``arch``, ``conv``, ``conv_kwargs``, ``num_classes`` and
``input_shape`` (C, H, W), which is what a convdeploy checkpoint records. The conv kinds
come from ``deploy.layers.registry``: a kind applies to an arch when it replaces a role
the arch has, and a kind may give its models of a base arch their own name (the SC kind
turns ResNet-50 into ``scnet50``), which the zoo lists instead of the base arch, and name
further models built with network options of the base arch and options of its own
(``scnet50_v1d``: ResNet-D's deep stem and average-pool downsampling, SCNet's ``avd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from deploy.core.errors import BadInputError
from deploy.core.limits import check_model_size
from deploy.layers.paper import PaperTarget
from deploy.layers.registry import ConvKind, ZooModel, baseline_kind, conv_kind, conv_kinds
from deploy.models.complexity import largest_activation, weight_elements
from deploy.models.resnet import CifarResNet, ConvFactory, ZooNet, imagenet_resnet

IMAGENET_SHAPE = (3, 224, 224)
CIFAR_SHAPE = (3, 32, 32)
_BASIC_ROLES = frozenset({"stem", "block3x3", "shortcut"})
_BOTTLENECK_ROLES = frozenset({"stem", "block3x3", "block1x1", "shortcut", "bottleneck"})


@dataclass(frozen=True)
class Arch:
    """One base architecture: its default classes, input shape, the roles it offers and its builder."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    roles: frozenset[str]
    build: Callable[..., ZooNet]  # (num_classes, factory, **network options) -> model


def _imagenet(name: str) -> Callable[..., ZooNet]:
    return lambda classes, factory, **network: imagenet_resnet(name, classes, factory, **network)


_BASE: dict[str, Arch] = {
    a.name: a for a in (
        Arch("resnet18", 1000, IMAGENET_SHAPE, _BASIC_ROLES, _imagenet("resnet18")),
        Arch("resnet34", 1000, IMAGENET_SHAPE, _BASIC_ROLES, _imagenet("resnet34")),
        Arch("resnet50", 1000, IMAGENET_SHAPE, _BOTTLENECK_ROLES, _imagenet("resnet50")),
        Arch("resnet101", 1000, IMAGENET_SHAPE, _BOTTLENECK_ROLES, _imagenet("resnet101")),
        Arch("resnet20", 10, CIFAR_SHAPE, _BASIC_ROLES, lambda classes, factory: CifarResNet(20, classes, factory)),
    )
}


def _named_models() -> dict[str, tuple[ZooModel, ConvKind]]:
    """Zoo name -> (model record, kind) for the kinds that name their models (scnet50 -> resnet50 + sc)."""
    named: dict[str, tuple[ZooModel, ConvKind]] = {}
    for kind in conv_kinds():
        records = [ZooModel(name, base) for base, name in kind.zoo_names.items()] + list(kind.zoo_models)
        named.update({r.name: (r, kind) for r in records if r.base in _BASE})
    return named


def named_models_of(kind: ConvKind, base: str) -> list[str]:
    """The zoo names ``kind`` gives its models of the base arch ``base`` (its main name first)."""
    return [name for name, (record, k) in _named_models().items() if k is kind and record.base == base]


def archs() -> tuple[str, ...]:
    """Every arch the zoo builds: the base archs, then the kinds' named models."""
    return (*_BASE, *_named_models())


def resolve_arch(arch: str, conv: str | None) -> tuple[Arch, ConvKind, str]:
    """(base arch, kind, the model's zoo name) for ``arch`` built with ``conv``; BadInputError if it cannot be."""
    named = _named_models()
    if arch in named:
        base_name, named_kind = named[arch][0].base, named[arch][1]
        if conv is not None and conv_kind(conv) is not named_kind:
            raise BadInputError(f"{arch} is {base_name} with conv={named_kind.name!r}: build {base_name} for conv={conv!r}")
        return _BASE[base_name], named_kind, arch
    if arch not in _BASE:
        raise BadInputError(f"unknown arch {arch!r}: choose one of {', '.join(archs())}")
    kind = conv_kind(conv) if conv is not None else baseline_kind()
    base = _BASE[arch]
    if arch in kind.zoo_names:
        raise BadInputError(f"{arch} with conv={kind.name!r} is called {kind.zoo_names[arch]}: build that arch")
    if kind.roles and not kind.roles & base.roles:
        usable = " or ".join(repr(k) for k in supported_convs(arch))
        raise BadInputError(f"{arch} cannot be built with conv={kind.name!r} (it has no layer that kind replaces): "
                            f"use conv={usable}")
    return base, kind, arch


def supported_convs(arch: str) -> tuple[str, ...]:
    """The conv kinds the zoo builds ``arch`` with."""
    named = _named_models()
    if arch in named:
        return (named[arch][1].name,)
    if arch not in _BASE:
        raise BadInputError(f"unknown arch {arch!r}: choose one of {', '.join(archs())}")
    roles = _BASE[arch].roles
    return tuple(k.name for k in conv_kinds() if (not k.roles or k.roles & roles) and arch not in k.zoo_names)


def default_input_shape(arch: str) -> tuple[int, int, int]:
    """(C, H, W) the arch is built for."""
    return resolve_arch(arch, None)[0].input_shape


def build_model(arch: str, conv: str | None = None, num_classes: int | None = None,
                input_shape: tuple[int, int, int] | None = None, **conv_kwargs: Any) -> ZooNet:
    """Build ``arch`` with the convolutions of kind ``conv`` where that kind puts them.

    ``conv`` defaults to the baseline kind (``plain``), or to the kind a named model
    belongs to (``scnet50``). ``num_classes`` defaults to 1000 (ImageNet archs) or 10
    (resnet20); ``input_shape`` to the arch's. Unknown archs, convs or options raise
    ``BadInputError``; so do options the layer rejects, and a model whose weights or
    activations at ``input_shape`` would exceed the limits (``deploy.core.limits.check_model_size``),
    found on the ``meta`` device before any memory is taken.
    """
    base, kind, name = resolve_arch(arch, conv)
    classes = base.num_classes if num_classes is None else int(num_classes)
    if classes < 1:
        raise BadInputError(f"num_classes must be >= 1, got {num_classes}")
    named = _named_models()
    record = named[name][0] if name in named else ZooModel(name, base.name)
    factory = ConvFactory(kind.name, **{**dict(record.options), **conv_kwargs})
    shape = input_shape or base.input_shape

    def build() -> ZooNet:
        try:
            return base.build(classes, factory, **dict(record.arch_options))
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            raise BadInputError(f"cannot build {name} with conv={kind.name} {factory.conv_kwargs}: {exc}") from exc

    if torch.get_default_device().type != "meta":
        with torch.device("meta"):
            sized = build()
        options = "".join(f" {k}={v}" for k, v in factory.conv_kwargs.items())
        what = f"{name} with conv={kind.name}{options}"
        check_model_size(what, weight_elements(sized), largest_activation(sized, shape))
    model = build()
    model.arch = name
    model.conv = kind.name
    model.conv_kwargs = dict(factory.conv_kwargs)
    model.num_classes = classes
    model.input_shape = shape
    return model


def zoo_entries(arch_names: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(arch, conv, kwargs) for every zoo model of ``arch_names``: each kind at each of its variants."""
    return [(arch, conv, variant.kwargs) for arch in arch_names for conv in supported_convs(arch)
            for variant in conv_kind(conv).variants]


def paper_target(arch: str, conv: str, kwargs: dict[str, Any]) -> PaperTarget | None:
    """The paper's row for this model, or None when no paper prints one.

    A kind whose folded network is the baseline network (CoC, DO-Conv) is held against
    the baseline's rows, relabelled with the section that says so.
    """
    kind = conv_kind(conv)
    for t in kind.targets:
        if (t.arch, t.conv_kwargs) == (arch, kwargs):
            return t
    if kind.folded_twin and not kwargs:
        twin = paper_target(arch, baseline_kind().name, {})
        if twin is not None:
            return PaperTarget(arch, twin.params, twin.macs, f"{kind.folded_twin}: folded = plain twin ({twin.source})",
                               convention=twin.convention, note=twin.note, conv=kind.name)
    return None


def paper_targets() -> tuple[PaperTarget, ...]:
    """Every row the papers print for a zoo model (the folded twins' included)."""
    rows = [paper_target(a, c, kw) for a, c, kw in zoo_entries(list(archs()))]
    return tuple(r for r in rows if r is not None)


_BOTTLENECK_DEPTHS: dict[tuple[int, ...], str] = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}
_BASIC_DEPTHS: dict[tuple[int, ...], str] = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34", (3, 3, 3): "resnet20"}


def arch_from_keys(keys: set[str]) -> str:
    """The base ResNet arch of a state_dict, from its blocks per stage and block type."""
    counts = []
    for stage in range(1, 5):
        blocks = {k.split(".")[1] for k in keys if k.startswith(f"layer{stage}.")}
        if not blocks:
            break
        counts.append(len(blocks))
    bottleneck = any(k.startswith(("layer1.0.conv3.", "layer1.0.bn3.")) for k in keys)
    depths: dict[tuple[int, ...], str] = _BOTTLENECK_DEPTHS if bottleneck else _BASIC_DEPTHS
    arch = depths.get(tuple(counts))
    if arch is None:
        raise BadInputError(f"cannot tell the ResNet depth from the checkpoint's blocks per stage {tuple(counts)}")
    return arch
