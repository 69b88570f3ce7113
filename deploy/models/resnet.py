"""ResNets whose convolutions (and bottleneck blocks) are chosen, per role, by a conv factory.

ImageNet ResNet-18/34/50/101 follow torchvision's layout (He et al. 2016, Table 1;
the "v1.5" Bottleneck with its stride on ``conv2``), module names included, so the
reference checkpoints of SPConv (``resnet_sp``), DO-Conv and SCNet load strictly. The
ResNet-D network options of "Bag of Tricks" (He et al. 2019, Sec. 4.1, Fig. 2c), which
the SCNet reference's ``*_v1d`` models use, are ``deep_stem`` (three 3x3 convs,
``stem_width`` wide, instead of the 7x7: ``conv1.0/.3/.6``) and ``avg_down`` (a stride-s
s x s average pooling before a stride-1 projection: ``downsample.0`` pool,
``downsample.1`` conv, ``downsample.2`` BN). The CIFAR ResNet-20 is He et al. 2016,
Sec. 4.2 (16/32/64 filters, 3 stages of 3 basic blocks).

Every convolution is created through ``ConvFactory(role, ...)`` with one of the roles of
``deploy.layers.registry.CONV_ROLES``: ``stem`` (the first conv), ``block3x3`` (the 3x3
convs inside residual blocks), ``block1x1`` (the 1x1 convs of a Bottleneck) and
``shortcut`` (the projection ``downsample.0``); every bottleneck block through
``ConvFactory.block("bottleneck", ...)``. Which roles a kind replaces is its registry
record's business; everything else — the fully connected classifier included — stays a
plain ``nn.Conv2d``/``nn.Linear`` and the torchvision blocks below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from deploy.core.errors import BadInputError
from deploy.layers.registry import BLOCK_ROLES, CONV_ROLES, BlockSpec, ConvSpec, baseline_kind, conv_kind

ConvMaker = Callable[[str, int, int, int, int, int], nn.Module]


class ZooNet(nn.Module):
    """A zoo network: besides its modules it carries what a convdeploy checkpoint records."""

    arch: str
    conv: str
    conv_kwargs: dict[str, Any]
    num_classes: int
    input_shape: tuple[int, int, int]


def _folding_layer(module: nn.Module) -> bool:
    return hasattr(module, "switch_to_deploy") or getattr(module, "folds_to_conv", False)


class ConvFactory:
    """Builds the conv (or block) for one role: the kind's module where the kind replaces that role.

    ``conv_kwargs`` (e.g. ``ratio`` for SPConv, ``sa`` for CoC) are checked against the
    kind's options and passed to every replaced layer.
    """

    def __init__(self, conv: str | None = None, **conv_kwargs: Any) -> None:
        self.kind = conv_kind(conv) if conv is not None else baseline_kind()
        self.conv = self.kind.name
        self.conv_kwargs = self.kind.check_options(conv_kwargs)
        self.replaced = self.kind.roles

    def __call__(self, role: str, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
        if role not in CONV_ROLES:
            raise ValueError(f"unknown conv role {role!r}: expected one of {CONV_ROLES}")
        spec = ConvSpec(in_ch, out_ch, kernel_size, stride, padding)
        kind = self.kind if role in self.replaced else baseline_kind()
        return kind.build(role, spec, self.conv_kwargs if kind is self.kind else {})

    def block(self, role: str, spec: BlockSpec) -> nn.Module | None:
        """The kind's block for ``role``, or None where the network keeps its own block."""
        if role not in BLOCK_ROLES:
            raise ValueError(f"unknown block role {role!r}: expected one of {BLOCK_ROLES}")
        return self.kind.build(role, spec, self.conv_kwargs) if role in self.replaced else None


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and a residual (He et al. 2016, Fig. 5 left)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, make_conv: ConvMaker) -> None:
        super().__init__()
        self.conv1 = make_conv("block3x3", inplanes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = make_conv("block3x3", planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here: torchvision v1.5) -> 1x1 x4 (He et al. 2016, Fig. 5 right)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, make_conv: ConvMaker) -> None:
        super().__init__()
        width = planes
        self.conv1 = make_conv("block1x1", inplanes, width, 1, 1, 0)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = make_conv("block3x3", width, width, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = make_conv("block1x1", width, planes * self.expansion, 1, 1, 0)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ZeroPadShortcut(nn.Module):
    """He et al. 2016 option A: subsample by ``stride`` and zero-pad the new channels (no params)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.extra = out_ch - in_ch
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def _projection(inplanes: int, outplanes: int, stride: int, make_conv: ConvMaker, avg_down: bool = False) -> nn.Sequential:
    """Option B shortcut: ``downsample.0`` = 1x1 conv with stride, ``downsample.1`` = BN; with
    ``avg_down`` (ResNet-D) an s x s average pooling first and a stride-1 conv."""
    if not avg_down:
        return nn.Sequential(make_conv("shortcut", inplanes, outplanes, 1, stride, 0), nn.BatchNorm2d(outplanes))
    pool = nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(pool, make_conv("shortcut", inplanes, outplanes, 1, 1, 0), nn.BatchNorm2d(outplanes))


def _deep_stem(width: int, make_conv: ConvMaker) -> nn.Sequential:
    """ResNet-D's stem: 3x3/2 (width) -> 3x3 (width) -> 3x3 (2 x width), BN + ReLU between."""
    return nn.Sequential(
        make_conv("stem", 3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        make_conv("stem", width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        make_conv("stem", width, 2 * width, 3, 1, 1),
    )


def init_weights(model: nn.Module) -> None:
    """torchvision's init (Kaiming-normal fan_out convs, BN 1/0) for the plain modules only.

    Paper layers initialise themselves (DO-Conv's D = 0, IC's frozen ones kernel, ...),
    so nothing inside them is touched, except in those marked ``initialised_by_network``
    (SCNet's blocks, which its reference initialises like the rest of the network).
    """
    paper = [name for name, m in model.named_modules()
             if name and _folding_layer(m) and not getattr(m, "initialised_by_network", False)]
    for name, m in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in paper):
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(ZooNet):
    """ImageNet ResNet (224x224 input): stem 7x7/2 + max-pool, four stages, global pool, fc.

    ``deep_stem``, ``stem_width`` and ``avg_down`` are the ResNet-D options (module docstring).
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000,
                 make_conv: ConvFactory | None = None, deep_stem: bool = False, stem_width: int = 64,
                 avg_down: bool = False) -> None:
        super().__init__()
        make_conv = make_conv or ConvFactory()
        self.avg_down = avg_down
        self.inplanes = 2 * stem_width if deep_stem else 64
        self.conv1 = _deep_stem(stem_width, make_conv) if deep_stem else make_conv("stem", 3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, make_conv, is_first=False)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, make_conv)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, make_conv)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, make_conv)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int,
                    make_conv: ConvFactory, is_first: bool = True) -> nn.Sequential:
        """One stage; ``is_first`` marks the stage's first block as the SCNet reference does (layer1: no)."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = _projection(self.inplanes, planes * block.expansion, stride, make_conv, self.avg_down)
        specs = [BlockSpec(self.inplanes, planes, stride, downsample, is_first)]
        specs += [BlockSpec(planes * block.expansion, planes, 1, None, False) for _ in range(1, blocks)]
        self.inplanes = planes * block.expansion
        return nn.Sequential(*(self._block(block, spec, make_conv) for spec in specs))

    @staticmethod
    def _block(block: type[BasicBlock | Bottleneck], spec: BlockSpec, make_conv: ConvFactory) -> nn.Module:
        replaced = make_conv.block("bottleneck", spec) if block is Bottleneck else None
        return replaced or block(spec.inplanes, spec.planes, spec.stride, spec.downsample, make_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarResNet(ZooNet):
    """CIFAR ResNet-(6n+2) (He et al. 2016, Sec. 4.2): 3x3 stem, stages of 16/32/64 filters.

    ``shortcut="B"`` (default) projects with 1x1 conv + BN where the shape changes; "A"
    subsamples and zero-pads instead (no parameters). B is the one whose counts match
    SPConv Table 1 (the SPConv kind's targets): at alpha = 1/4 option A gives 0.069 M
    parameters against the paper's 0.071 M, option B 0.072 M.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, make_conv: ConvFactory | None = None,
                 shortcut: str = "B") -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise BadInputError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise BadInputError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 projection), got {shortcut!r}")
        make_conv = make_conv or ConvFactory()
        n = (depth - 2) // 6
        self.shortcut = shortcut
        self.inplanes = 16
        self.conv1 = make_conv("stem", 3, 16, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n, 1, make_conv)
        self.layer2 = self._make_layer(32, n, 2, make_conv)
        self.layer3 = self._make_layer(64, n, 2, make_conv)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, make_conv: ConvMaker) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes:
            if self.shortcut == "B":
                downsample = _projection(self.inplanes, planes, stride, make_conv)
            else:
                downsample = ZeroPadShortcut(self.inplanes, planes, stride)
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, make_conv)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, 1, None, make_conv) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_IMAGENET: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


def imagenet_resnet(arch: str, num_classes: int = 1000, make_conv: ConvFactory | None = None,
                    **network: Any) -> ResNet:
    """``resnet18``/``34``/``50``/``101`` with torchvision's module names; ``network`` are the
    ResNet-D options of ``ResNet`` (``deep_stem``, ``stem_width``, ``avg_down``)."""
    if arch not in _IMAGENET:
        raise BadInputError(f"unknown ImageNet ResNet {arch!r}: choose one of {sorted(_IMAGENET)}")
    block, layers = _IMAGENET[arch]
    return ResNet(block, layers, num_classes, make_conv, **network)
