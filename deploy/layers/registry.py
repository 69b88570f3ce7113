"""The conv-kind registry: every paper's layer registers one ``ConvKind`` from its own file.

A kind says which roles of a network it replaces (``CONV_ROLES``: the stem, the 3x3 and
1x1 convs of residual blocks, the projection shortcut; ``BLOCK_ROLES``: whole bottleneck
blocks), how to build its module for a role (``build``), which options it takes (typed,
usually derived from the module's constructor signature), the variants the zoo lists,
how to recognise its reference code's checkpoints, its named models (``zoo_names``,
``zoo_models``: SCNet-50 and SCNet-50-v1d on ResNet-50), and the papers' figures. The zoo,
``deploy zoo list``, checkpoint recognition and the claims matrix read everything from
here; a new layer is one file plus one ``register_conv_kind`` call (and one import line
in ``deploy/layers/__init__.py`` for a built-in one).
"""

from __future__ import annotations

import inspect
import math
import typing
import warnings
from dataclasses import dataclass, field, replace
from types import NoneType, UnionType
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from deploy.core.errors import BadInputError
from deploy.layers.paper import ClaimCheck, ClaimFacts, PaperTarget

CONV_ROLES = ("stem", "block3x3", "block1x1", "shortcut")
BLOCK_ROLES = ("bottleneck",)
ROLES = CONV_ROLES + BLOCK_ROLES
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class ConvSpec:
    """The ``nn.Conv2d`` geometry a network asks for in a conv role."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class BlockSpec:
    """What a ResNet stage asks of a bottleneck block (torchvision's arguments)."""

    inplanes: int
    planes: int
    stride: int = 1
    downsample: nn.Module | None = None
    is_first: bool = True


@dataclass(frozen=True)
class ConvOption:
    """One option of a conv kind: name, type (bool, int, float or str), default and help."""

    name: str
    type: type
    default: Any
    help: str = ""
    optional: bool = False  # None is a value
    choices: tuple[Any, ...] = ()
    recorded: bool = False  # changes the architecture: the default is recorded in a checkpoint too
    low: float | None = None  # numbers: the smallest value allowed (inclusive)
    high: float | None = None  # numbers: the largest value allowed (inclusive)
    weight: str = ""  # the layer attribute holding the option's value once trained (IC's alpha): loads record it

    def parse(self, text: str) -> Any:
        """The typed value of ``text`` (a command-line ``KEY=VALUE``), checked."""
        raw = text.strip()
        if self.optional and raw.lower() in ("none", "null"):
            return None
        try:
            if self.type is bool:
                if raw.lower() not in _TRUE + _FALSE:
                    raise ValueError
                value: Any = raw.lower() in _TRUE
            elif self.type is int:
                value = int(raw)
            elif self.type is float:
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise BadInputError(f"option {self.name}={text!r} is not {self._kind_text()}") from None
        return self.check(value)

    def check(self, value: Any) -> Any:
        """``value`` coerced to the option's type, or a BadInputError saying what is allowed."""
        if value is None:
            if self.optional:
                return None
            raise BadInputError(f"option {self.name}=None is not allowed: give {self._kind_text()}")
        ok = isinstance(value, self.type) and not (self.type is not bool and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise BadInputError(f"option {self.name}={value!r} is not {self._kind_text()}")
        if self.type is float and not math.isfinite(value):
            raise BadInputError(f"option {self.name}={value!r} must be a finite number")
        if self.choices and value not in self.choices:
            raise BadInputError(f"option {self.name}={value!r} is not one of {', '.join(map(repr, self.choices))}")
        outside = (self.low is not None and value < self.low) or (self.high is not None and value > self.high)
        if self.type in (int, float) and outside:
            raise BadInputError(f"option {self.name}={value!r} is outside {self.range_text()}")
        return value

    def range_text(self) -> str:
        """``[1, 8]``: the values a numeric option takes."""
        return f"[{self.low:g}, {self.high:g}]"

    def _kind_text(self) -> str:
        names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        text = names.get(self.type, self.type.__name__)
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        return text + (" (or none)" if self.optional else "")

    def describe(self) -> str:
        """``ratio: float = 0.5 (split ratio alpha)`` for help texts."""
        kind = "|".join(map(str, self.choices)) if self.choices else self.type.__name__
        if self.type in (int, float):
            kind += f" in {self.range_text()}"
        return f"{self.name}: {kind}{' | none' if self.optional else ''} = {self.default!r}" + (
            f" ({self.help})" if self.help else "")


@dataclass(frozen=True)
class ZooVariant:
    """One model of a kind that the zoo lists (e.g. SPConv at one ratio)."""

    options: tuple[tuple[str, Any], ...] = ()
    label: str = ""  # shown after the model's name: "α=1/2"
    key: str = ""  # short and path-safe-ish, used in claims keys: "1/2"

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class ZooModel:
    """A further named model of a kind on a base arch (SCNet-50-v1d on ResNet-50): the network
    options of the base arch (``deep_stem``, ``stem_width``, ``avg_down``) and the kind's own
    options it is built with (``avd``). Checkpoints of the kind's reference code are matched
    against each named model of their base arch by their keys and shapes."""

    name: str
    base: str
    arch_options: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()


Builder = Callable[[str, Any, Mapping[str, Any]], nn.Module]
Recogniser = Callable[[Mapping[str, Any]], "dict[str, Any] | None"]


@dataclass(frozen=True)
class ConvKind:
    """Everything the rest of the package knows about one kind of convolution."""

    name: str
    title: str  # "SPConv"
    module: type[nn.Module]
    roles: frozenset[str]
    build: Builder  # (role, ConvSpec | BlockSpec, options) -> module
    options: tuple[ConvOption, ...] = ()
    variants: tuple[ZooVariant, ...] = (ZooVariant(),)
    recognise: Recogniser | None = None  # reference checkpoint -> options, else None
    reference: str = ""  # name of the reference code whose checkpoints ``recognise`` reads
    targets: tuple[PaperTarget, ...] = ()
    claim: ClaimFacts | None = None
    zoo_names: Mapping[str, str] = field(default_factory=dict)  # base arch -> this kind's model name
    zoo_models: tuple[ZooModel, ...] = ()  # more named models (network variants of a base arch)
    folded_twin: str = ""  # where the paper says the folded network is the baseline network
    aliases: tuple[str, ...] = ()
    paper: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.claim is not None and self.claim.check is ClaimCheck.BASELINE

    def option(self, name: str) -> ConvOption:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise BadInputError(f"conv {self.name!r} has no option {name!r}: {self.options_text()}")

    def options_text(self) -> str:
        """``its options are ratio`` / ``it takes no options``."""
        if not self.options:
            return "it takes no options"
        return "its options are " + ", ".join(o.name for o in self.options)

    def check_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Typed options for the module: unknown names and bad values raise, recorded defaults are added."""
        unknown = sorted(set(given) - {o.name for o in self.options})
        if unknown:
            raise BadInputError(f"conv {self.name!r} does not take {', '.join(unknown)}: {self.options_text()}")
        checked = {o.name: o.default for o in self.options if o.recorded}
        for name, value in given.items():
            try:
                checked[name] = self.option(name).check(value)
            except BadInputError as exc:
                raise BadInputError(f"conv {self.name!r}: {exc}") from None
        return checked

    def parse_options(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """``{"ratio": "0.25"} -> {"ratio": 0.25}``, every key and value checked against the options."""
        unknown = sorted(set(raw) - {o.name for o in self.options})
        if unknown:
            raise BadInputError(f"conv {self.name!r} does not take {', '.join(unknown)}: {self.options_text()}")
        try:
            return {name: self.option(name).parse(text) for name, text in raw.items()}
        except BadInputError as exc:
            raise BadInputError(f"conv {self.name!r}: {exc}") from None


_KINDS: dict[str, ConvKind] = {}


def register_conv_kind(kind: ConvKind) -> ConvKind:
    """Add ``kind`` (its targets tagged with its name); re-registering a name replaces it, with a
    warning. Every numeric option must declare its bounds."""
    bad = sorted(set(kind.roles) - set(ROLES))
    if bad:
        raise ValueError(f"conv kind {kind.name!r}: unknown roles {bad}; roles are {ROLES}")
    unbounded = [o.name for o in kind.options if o.type in (int, float) and (o.low is None or o.high is None)]
    if unbounded:
        raise ValueError(f"conv kind {kind.name!r}: numeric options {unbounded} need bounds (low, high): a value "
                         "without them can ask for any amount of memory")
    kind = replace(kind, targets=tuple(replace(t, conv=kind.name) for t in kind.targets))
    if kind.name in _KINDS:  # as timm's registry does: a second registration replaces the first, loudly
        warnings.warn(f"conv kind {kind.name!r} is registered again: the new record replaces the old one",
                      stacklevel=2)
    _KINDS[kind.name] = kind
    return kind


def unregister_conv_kind(name: str) -> None:
    """Remove a kind (tests that register a toy kind clean up with this)."""
    _KINDS.pop(name, None)


def conv_kinds() -> tuple[ConvKind, ...]:
    """Every registered kind, in registration order."""
    return tuple(_KINDS.values())


def conv_kind(name: str) -> ConvKind:
    """The kind called ``name`` (or one of its aliases); BadInputError listing the kinds otherwise."""
    if name in _KINDS:
        return _KINDS[name]
    for kind in _KINDS.values():
        if name in kind.aliases:
            return kind
    raise BadInputError(f"unknown conv {name!r}: choose one of {', '.join(_KINDS)}")


def baseline_kind() -> ConvKind:
    """The kind every other is compared with (plain ``nn.Conv2d``)."""
    for kind in _KINDS.values():
        if kind.is_baseline:
            return kind
    raise LookupError("no baseline conv kind is registered")


def _option_type(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, UnionType) and NoneType in args:
        rest = [a for a in args if a is not NoneType]
        return _option_type(rest[0])[0], True
    if hint in (bool, int, float, str):
        return hint, False
    raise TypeError(f"option type {hint!r} is not one of bool, int, float, str (or None)")


def options_from_signature(fn: Callable[..., Any], names: Sequence[str], help: Mapping[str, str] | None = None,
                           choices: Mapping[str, Sequence[Any]] | None = None, recorded: Sequence[str] = (),
                           bounds: Mapping[str, tuple[float, float]] | None = None,
                           weights: Mapping[str, str] | None = None) -> tuple[ConvOption, ...]:
    """``ConvOption``s for the parameters ``names`` of ``fn`` (a layer's constructor): type and
    default from its signature and annotations; help, choices, (low, high) bounds of the numeric
    ones and the layer attribute that holds an initial value once trained from the mappings given."""
    target_fn = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target_fn)
    params = inspect.signature(target_fn).parameters
    out = []
    for name in names:
        kind, optional = _option_type(hints[name])
        low, high = (bounds or {}).get(name, (None, None))
        out.append(ConvOption(name, kind, params[name].default, (help or {}).get(name, ""), optional,
                              tuple((choices or {}).get(name, ())), name in recorded, low, high,
                              (weights or {}).get(name, "")))
    return tuple(out)
