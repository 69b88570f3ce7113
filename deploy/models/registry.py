"""The model zoo: ``build_model(arch, conv, ...)`` and the papers' complexity figures.

Every built model carries ``arch``, ``conv``, ``conv_kwargs``, ``num_classes`` and
``input_shape`` (C, H, W), which is what a convdeploy checkpoint records.
``PAPER_TARGETS`` holds the parameter and MAC figures the papers print (the project's
``paper-targets.md`` as data, since the installed product cannot read that file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from deploy.errors import BadInputError
from deploy.models.resnet import CifarResNet, ConvFactory, imagenet_resnet
from deploy.models.scnet import scnet

IMAGENET_SHAPE = (3, 224, 224)
CIFAR_SHAPE = (3, 32, 32)

_RESNET_CONVS = ("plain", "coc", "doconv", "ic", "sp")
# arch -> (default classes, input shape, supported convs)
_ARCH_INFO: dict[str, tuple[int, tuple[int, int, int], tuple[str, ...]]] = {
    "resnet18": (1000, IMAGENET_SHAPE, _RESNET_CONVS),
    "resnet34": (1000, IMAGENET_SHAPE, _RESNET_CONVS),
    "resnet50": (1000, IMAGENET_SHAPE, _RESNET_CONVS),
    "resnet101": (1000, IMAGENET_SHAPE, _RESNET_CONVS),
    "resnet20": (10, CIFAR_SHAPE, _RESNET_CONVS),
    "scnet50": (1000, IMAGENET_SHAPE, ("sc",)),
    "scnet101": (1000, IMAGENET_SHAPE, ("sc",)),
}
ARCHS: tuple[str, ...] = tuple(_ARCH_INFO)
CONVS: tuple[str, ...] = (*_RESNET_CONVS, "sc")

# keyword arguments each conv kind accepts (passed on to the paper's layer)
CONV_KWARGS: dict[str, tuple[str, ...]] = {
    "plain": (),
    "coc": ("sa", "skp", "sl", "skip", "dilate", "stnd", "ln_super", "ln_kernel"),
    "doconv": ("D_mul",),
    "ic": ("alpha", "learn_alpha", "bias"),
    "sp": ("ratio",),
    "sc": ("interpolation", "pooling_r"),
}
# defaults recorded in model.conv_kwargs because they change the architecture
_DEFAULT_KWARGS: dict[str, dict[str, Any]] = {"sp": {"ratio": 0.5}}


def supported_convs(arch: str) -> tuple[str, ...]:
    """The conv kinds ``arch`` can be built with."""
    _check_arch(arch)
    return _ARCH_INFO[arch][2]


def _check_arch(arch: str) -> None:
    if arch not in _ARCH_INFO:
        raise BadInputError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")


def _check_conv(arch: str, conv: str, conv_kwargs: dict[str, Any]) -> None:
    if conv not in CONVS:
        raise BadInputError(f"unknown conv {conv!r}: choose one of {', '.join(CONVS)}")
    allowed = supported_convs(arch)
    if conv not in allowed:
        raise BadInputError(f"{arch} cannot be built with conv={conv!r}: use conv={' or '.join(map(repr, allowed))}")
    unknown = sorted(set(conv_kwargs) - set(CONV_KWARGS[conv]))
    if unknown:
        valid = ", ".join(CONV_KWARGS[conv]) or "none"
        raise BadInputError(f"conv={conv!r} does not take {', '.join(unknown)}: its options are {valid}")


def build_model(arch: str, conv: str = "plain", num_classes: int | None = None, **conv_kwargs: Any) -> nn.Module:
    """Build ``arch`` with the convolutions of paper ``conv`` where that paper puts them.

    ``num_classes`` defaults to 1000 (ImageNet archs) or 10 (resnet20). Unknown archs,
    convs or options raise ``BadInputError``; so do options the layer rejects.
    """
    _check_arch(arch)
    _check_conv(arch, conv, conv_kwargs)
    default_classes, input_shape, _ = _ARCH_INFO[arch]
    classes = default_classes if num_classes is None else int(num_classes)
    if classes < 1:
        raise BadInputError(f"num_classes must be >= 1, got {num_classes}")
    kwargs = {**_DEFAULT_KWARGS.get(conv, {}), **conv_kwargs}
    try:
        if conv == "sc":
            model: nn.Module = scnet(arch, classes, **kwargs)
        elif arch == "resnet20":
            model = CifarResNet(20, classes, ConvFactory(conv, **kwargs))
        else:
            model = imagenet_resnet(arch, classes, ConvFactory(conv, **kwargs))
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise BadInputError(f"cannot build {arch} with conv={conv} {kwargs}: {exc}") from exc
    model.arch = arch
    model.conv = conv
    model.conv_kwargs = kwargs
    model.num_classes = classes
    model.input_shape = input_shape
    return model


@dataclass(frozen=True)
class PaperTarget:
    """One (model, params, MACs) row a paper prints, numbers kept as printed.

    ``params``/``macs`` are strings such as ``"18.34 M"`` so that the precision the
    paper printed is kept: ``printed_range`` turns one into value ± one unit of its
    last printed digit (18.34 M -> 18.33 M .. 18.35 M), the tolerance the tests use.
    ``macs_conv_only`` is False where the paper's count demonstrably includes more than
    the Conv/Linear MACs ``count_macs`` measures (see ``note``).
    """

    arch: str
    conv: str
    kwargs: tuple[tuple[str, Any], ...]
    params: str
    macs: str
    source: str
    macs_conv_only: bool = True
    note: str = field(default="")

    @property
    def conv_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.kwargs)
        return f"{self.arch}/{self.conv}" + (f"({opts})" if opts else "")


_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9}


def parse_count(text: str) -> tuple[float, float]:
    """``"18.34 M" -> (18.34e6, 0.01e6)``: the value and one unit of its last printed digit."""
    number, unit = text.split()
    scale = _UNITS[unit]
    decimals = len(number.split(".")[1]) if "." in number else 0
    return float(number) * scale, 10.0 ** (-decimals) * scale


def printed_range(text: str) -> tuple[float, float]:
    """Closed interval of counts within one unit of the last printed digit of ``text``."""
    value, step = parse_count(text)
    return value - step, value + step


def _t(arch: str, conv: str, params: str, macs: str, source: str, **kw: Any) -> PaperTarget:
    opts = {k: v for k, v in kw.items() if k in ("macs_conv_only", "note")}
    kwargs = tuple(sorted((k, v) for k, v in kw.items() if k not in opts))
    return PaperTarget(arch, conv, kwargs, params, macs, source, **opts)


_SP20_NOTE = (
    "SPConv Table 1 FLOPs count more than Conv/Linear MACs (BN, biases, pooling): the conv part "
    "matches (alpha=1/2 minus alpha=1/4: 5.02 M in the paper, 5.01 M here) but a constant "
    "~2.7 M, the same at both alphas, does not"
)

_PLAIN_TARGETS = [
    _t("resnet18", "plain", "11.7 M", "1.82 G", "IC Table 1"),
    _t("resnet34", "plain", "21.8 M", "3.68 G", "IC Table 1"),
    _t("resnet50", "plain", "25.56 M", "4.1 G", "SPConv Table 2 (params); SCNet Table 1 MAdds "
       "(IC Table 1: 4.12 G, SPConv Table 2: 4.14 G)"),
    _t("resnet101", "plain", "44.5 M", "7.8 G", "SCNet Table 1"),
    _t("resnet20", "plain", "0.27 M", "41.62 M", "SPConv Table 1"),
]

PAPER_TARGETS: tuple[PaperTarget, ...] = (
    *_PLAIN_TARGETS,
    _t("resnet18", "ic", "12.9 M", "2.01 G", "IC Table 1"),
    _t("resnet34", "ic", "24.2 M", "4.07 G", "IC Table 1"),
    _t("resnet50", "ic", "26.8 M", "4.33 G", "IC Table 1"),
    _t("scnet50", "sc", "25.6 M", "4.0 G", "SCNet Table 1"),
    _t("scnet101", "sc", "44.6 M", "7.2 G", "SCNet Table 1"),
    _t("resnet50", "sp", "18.34 M", "2.97 G", "SPConv Table 2", ratio=0.5),
    _t("resnet50", "sp", "16.93 M", "2.74 G", "SPConv Table 2", ratio=0.25),
    _t("resnet50", "sp", "16.22 M", "2.62 G", "SPConv Table 2", ratio=0.125),
    _t("resnet20", "sp", "0.10 M", "17.91 M", "SPConv Table 1", ratio=0.5, macs_conv_only=False, note=_SP20_NOTE),
    _t("resnet20", "sp", "0.071 M", "12.89 M", "SPConv Table 1", ratio=0.25, macs_conv_only=False, note=_SP20_NOTE),
    # folded CoC / DO-Conv networks are their plain twins (DO-Conv Sec. 3, CoC Sec. 4.2)
    *(
        PaperTarget(t.arch, conv, (), t.params, t.macs, f"{src}: folded = plain twin ({t.source})")
        for conv, src in (("coc", "CoC Sec. 4.2"), ("doconv", "DO-Conv Sec. 3"))
        for t in _PLAIN_TARGETS
    ),
)
