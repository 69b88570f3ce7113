"""SCNet-50/101 (SCNet, Sec. 3.2 and Table 1): ResNet with SCBottleneck blocks.

The layout and every module name follow the reference ``scnet.py`` (plain 7x7 stem,
``deep_stem=False``, ``avg_down=False``, ``avd=False``, ``bottleneck_width=32``,
cardinality 1), so the official scnet50 / scnet101 checkpoints load with strict key
matching: ``conv1``, ``bn1``, ``layerN.M.{conv1_a,bn1_a,k1.0/1,conv1_b,bn1_b,
scconv.k2.1/2,scconv.k3.0/1,scconv.k4.0/1,conv3,bn3,downsample.0/1}``, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

from deploy.errors import BadInputError

_LAYERS = {"scnet50": [3, 4, 6, 3], "scnet101": [3, 4, 23, 3]}


class SCNet(nn.Module):
    """SCNet for 224x224 ImageNet input: stem 7x7/2 + max-pool, four stages, global pool, fc."""

    def __init__(self, layers: list[int], num_classes: int = 1000, interpolation: str = "nearest",
                 pooling_r: int | None = None) -> None:
        super().__init__()
        from deploy.layers.scconv import SCBottleneck

        self._block_kwargs = {"interpolation": interpolation, "pooling_r": pooling_r}
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(SCBottleneck, 64, layers[0], 1, is_first=False)
        self.layer2 = self._make_layer(SCBottleneck, 128, layers[1], 2)
        self.layer3 = self._make_layer(SCBottleneck, 256, layers[2], 2)
        self.layer4 = self._make_layer(SCBottleneck, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * SCBottleneck.expansion, num_classes)
        # the reference initialises every conv and BN, those inside the blocks included
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, is_first: bool = True) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample=downsample, is_first=is_first, **self._block_kwargs)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **self._block_kwargs) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def scnet(arch: str, num_classes: int = 1000, interpolation: str = "nearest", pooling_r: int | None = None) -> SCNet:
    """``scnet50`` or ``scnet101``; ``interpolation='bilinear'`` follows the paper text, the default the code."""
    if arch not in _LAYERS:
        raise BadInputError(f"unknown SCNet {arch!r}: choose one of {sorted(_LAYERS)}")
    return SCNet(_LAYERS[arch], num_classes, interpolation, pooling_r)
