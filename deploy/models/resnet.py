"""ResNets whose convolutions are chosen, per role, by a conv factory.

ImageNet ResNet-18/34/50/101 follow torchvision's layout (He et al. 2016, Table 1;
the "v1.5" Bottleneck with its stride on ``conv2``), module names included, so the
reference checkpoints of SPConv (``resnet_sp``) and DO-Conv load strictly. The CIFAR
ResNet-20 is He et al. 2016, Sec. 4.2 (16/32/64 filters, 3 stages of 3 basic blocks).

Every convolution is created through ``ConvFactory(role, ...)`` with one of four roles:
``stem`` (the first conv), ``block3x3`` (the 3x3 convs inside residual blocks),
``block1x1`` (the 1x1 convs of a Bottleneck) and ``shortcut`` (the projection
``downsample.0``). Which roles a paper replaces is ``REPLACED_ROLES`` below; everything
else — the fully connected classifier included — stays a plain ``nn.Conv2d``/``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from deploy.errors import BadInputError

ROLES = ("stem", "block3x3", "block1x1", "shortcut")

# conv kind -> the roles whose convolutions that paper replaces
REPLACED_ROLES: dict[str, frozenset[str]] = {
    "plain": frozenset(),
    # CoC Sec. 4.1 (and the reference repo: c1x1=False): every conv with a kernel larger
    # than 1x1, i.e. the 3x3s in the blocks and the stem; 1x1s stay plain.
    "coc": frozenset({"stem", "block3x3"}),
    # DO-Conv Sec. 4: every conv layer is over-parameterized (a 1x1 simply has no D).
    "doconv": frozenset(ROLES),
    # IC Sec. 3.3 / 4.1: "replacing the whole 3x3 convolutional layers in blocks".
    "ic": frozenset({"block3x3"}),
    # SPConv Sec. 4 / 4.1-4.2: only the 3x3 convs; in a Bottleneck that is conv2 alone,
    # in ResNet-20 every 3x3 "except the initial one".
    "sp": frozenset({"block3x3"}),
}

ConvMaker = Callable[[str, int, int, int, int, int], nn.Module]


def _is_paper_layer(module: nn.Module) -> bool:
    return hasattr(module, "switch_to_deploy") or getattr(module, "folds_to_conv", False)


class ConvFactory:
    """Builds the conv for one role: the paper's layer where the paper replaces it.

    ``conv_kwargs`` (e.g. ``ratio`` for SPConv, ``sa`` for CoC) are passed to every
    replaced layer. The paper layers are imported only when first needed.
    """

    def __init__(self, conv: str = "plain", **conv_kwargs: Any) -> None:
        if conv not in REPLACED_ROLES:
            raise BadInputError(f"unknown conv kind {conv!r} for a ResNet: choose one of {sorted(REPLACED_ROLES)}")
        self.conv = conv
        self.conv_kwargs = dict(conv_kwargs)
        self.replaced = REPLACED_ROLES[conv]

    def __call__(self, role: str, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
        if role not in ROLES:
            raise ValueError(f"unknown conv role {role!r}: expected one of {ROLES}")
        if role not in self.replaced:
            return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        kw = self.conv_kwargs
        if self.conv == "coc":
            from deploy.layers.coc import CoCConv2d

            return CoCConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False, **kw)
        if self.conv == "doconv":
            from deploy.layers.doconv import DOConv2d

            return DOConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False, **kw)
        if self.conv == "ic":
            from deploy.layers.ic import ICConv2d

            return ICConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, **kw)
        # sp: SPConv3x3 is a drop-in for a 3x3, padding 1 convolution only
        from deploy.layers.spconv import SPConv3x3

        if kernel_size != 3 or padding != 1:
            raise ValueError(f"SPConv replaces 3x3 convolutions with padding 1, not k={kernel_size} p={padding}")
        return SPConv3x3(in_ch, out_ch, stride=stride, **kw)


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


def _projection(inplanes: int, outplanes: int, stride: int, make_conv: ConvMaker) -> nn.Sequential:
    """Option B shortcut: ``downsample.0`` = 1x1 conv with stride, ``downsample.1`` = BN."""
    return nn.Sequential(make_conv("shortcut", inplanes, outplanes, 1, stride, 0), nn.BatchNorm2d(outplanes))


def init_weights(model: nn.Module) -> None:
    """torchvision's init (Kaiming-normal fan_out convs, BN 1/0) for the plain modules only.

    Paper layers initialise themselves (DO-Conv's D = 0, IC's frozen ones kernel, ...),
    so nothing inside them is touched.
    """
    paper = [name for name, m in model.named_modules() if name and _is_paper_layer(m)]
    for name, m in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in paper):
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """ImageNet ResNet (224x224 input): stem 7x7/2 + max-pool, four stages, global pool, fc."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000,
                 make_conv: ConvMaker | None = None) -> None:
        super().__init__()
        make_conv = make_conv or ConvFactory("plain")
        self.inplanes = 64
        self.conv1 = make_conv("stem", 3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, make_conv)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, make_conv)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, make_conv)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, make_conv)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, make_conv: ConvMaker) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = _projection(self.inplanes, planes * block.expansion, stride, make_conv)
        layers = [block(self.inplanes, planes, stride, downsample, make_conv)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, make_conv) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) (He et al. 2016, Sec. 4.2): 3x3 stem, stages of 16/32/64 filters.

    ``shortcut="B"`` (default) projects with 1x1 conv + BN where the shape changes; "A"
    subsamples and zero-pads instead (no parameters). B is the one whose counts match
    SPConv Table 1 (see registry.PAPER_TARGETS): at alpha = 1/4 option A gives 0.069 M
    parameters against the paper's 0.071 M, option B 0.072 M.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, make_conv: ConvMaker | None = None,
                 shortcut: str = "B") -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise BadInputError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise BadInputError(f"shortcut must be 'A' (zero-pad) or 'B' (1x1 projection), got {shortcut!r}")
        make_conv = make_conv or ConvFactory("plain")
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


_IMAGENET = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


def imagenet_resnet(arch: str, num_classes: int = 1000, make_conv: ConvMaker | None = None) -> ResNet:
    """``resnet18``/``34``/``50``/``101`` with torchvision's module names."""
    if arch not in _IMAGENET:
        raise BadInputError(f"unknown ImageNet ResNet {arch!r}: choose one of {sorted(_IMAGENET)}")
    block, layers = _IMAGENET[arch]
    return ResNet(block, layers, num_classes, make_conv)
