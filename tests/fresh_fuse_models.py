"""Test-only models whose fold methods build their fused convolution fresh and ``copy_()`` into it.

Written from the patterns of timm's LeViT and RepViT (``ConvNorm.fuse()``, ``RepVggDw.fuse()``:
``nn.Conv2d(...)`` then ``m.weight.data.copy_(w)``), RepVGG's and MobileOne's reference code
(an in-place ``reparameterize()`` / ``switch_to_deploy()`` that creates ``self.reparam`` the same
way): a fresh ``nn.Conv2d`` is float32 on the CPU whatever the module around it holds. Beside them,
forwards that cast (``x.float()``) or build float32 constants (``torch.ones``), which do not run in
float64 at all. The model builders give seeded weights and non-trivial BatchNorm statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import randomise_bn


class ConvNorm(nn.Module):
    """timm's LeViT/RepViT ConvNorm: conv (no bias) + BN; ``fuse()`` returns a fresh conv."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        c, bn = self.c, self.bn
        w = bn.weight / (bn.running_var + bn.eps) ** 0.5
        b = bn.bias - bn.running_mean * w
        m = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups)
        m.weight.data.copy_(c.weight * w[:, None, None, None])
        m.bias.data.copy_(b)
        return m


class RepVggDw(nn.Module):
    """timm's RepViT token mixer: BN(dw3x3 conv+BN + dw1x1 conv + x); ``fuse()`` builds on the fused ConvNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvNorm(channels, channels, 3, groups=channels)
        self.conv1 = nn.Conv2d(channels, channels, 1, groups=channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x) + self.conv1(x) + x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv = self.conv.fuse()
        identity = F.pad(torch.ones_like(self.conv1.weight), [1, 1, 1, 1])
        weight = conv.weight + F.pad(self.conv1.weight, [1, 1, 1, 1]) + identity
        bias = conv.bias + self.conv1.bias
        scale = self.bn.weight / (self.bn.running_var + self.bn.eps) ** 0.5
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, groups=conv.groups)
        fused.weight.copy_(weight * scale[:, None, None, None])
        fused.bias.copy_(self.bn.bias + (bias - self.bn.running_mean) * scale)
        return fused


class _Branches(nn.Module):
    """RepVGG's training-time block: ReLU(conv3x3+BN + conv1x1+BN + BN(x)); the fold creates ``self.reparam``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dense = ConvNorm(channels, channels, 3)
        self.one = ConvNorm(channels, channels, 1)
        self.identity = nn.BatchNorm2d(channels)
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return F.relu(self.reparam(x))
        return F.relu(self.dense(x) + self.one(x) + self.identity(x))

    @torch.no_grad()
    def _merge(self) -> None:
        dense, one = self.dense.fuse(), self.one.fuse()
        c = dense.out_channels
        eye = torch.zeros_like(dense.weight)
        eye[torch.arange(c), torch.arange(c), 1, 1] = 1
        scale = self.identity.weight / (self.identity.running_var + self.identity.eps) ** 0.5
        weight = dense.weight + F.pad(one.weight, [1, 1, 1, 1]) + eye * scale[:, None, None, None]
        bias = dense.bias + one.bias + self.identity.bias - self.identity.running_mean * scale
        self.reparam = nn.Conv2d(c, c, 3, padding=1)
        self.reparam.weight.copy_(weight)
        self.reparam.bias.copy_(bias)
        del self.dense, self.one, self.identity


class RepVGGFresh(_Branches):
    """timm's in-place ``reparameterize()``."""

    def reparameterize(self) -> None:
        self._merge()


class MobileOneFresh(_Branches):
    """The reference code's in-place ``switch_to_deploy()``."""

    def switch_to_deploy(self) -> None:
        self._merge()


class CastingBlock(RepVGGFresh):
    """A block whose own forward casts its input to float32: it runs in float32 only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


class FreshNet(nn.Module):
    """Every fresh-conv pattern in one network; ``cast`` adds a forward that casts (``x.float()``)
    and a head that multiplies by a float32 constant built in the forward (``torch.ones``)."""

    def __init__(self, cast: bool = False, casting_block: bool = False, classes: int = 3) -> None:
        super().__init__()
        self.cast = cast
        self.stem = ConvNorm(3, 8, 3, stride=2)
        self.mixer = RepVggDw(8)
        self.rep = RepVGGFresh(8)
        self.mobile = CastingBlock(8) if casting_block else MobileOneFresh(8)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cast:
            x = x.float()
        x = self.mobile(self.rep(self.mixer(F.relu(self.stem(x)))))
        pooled = x.mean((2, 3))
        if self.cast:
            return pooled @ torch.ones(8, self.classes) / 8 + pooled[:, : self.classes]
        return pooled[:, : self.classes]


def fresh_net(seed: int = 0, **options: bool) -> FreshNet:
    torch.manual_seed(seed)
    return randomise_bn(FreshNet(**options), torch.Generator().manual_seed(seed)).eval()


class ResidualDrop(nn.Module):
    """timm's EfficientViT (MSRA) residual: ``x + m(x)`` (the drop only in training), no fold method."""

    def __init__(self, m: nn.Module, drop: float = 0.1) -> None:
        super().__init__()
        self.m = m
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop > 0:
            return x + self.m(x) * torch.rand(x.size(0), 1, 1, 1).ge_(self.drop).div(1 - self.drop)
        return x + self.m(x)


def residual_net(seed: int = 0) -> nn.Module:
    """A stem, two depthwise residuals (3x3, dilated 3x3) and a grouped 1x1 one, around fresh-fuse ConvNorms."""
    torch.manual_seed(seed)
    dilated = ConvNorm(8, 8, 3, groups=8)
    dilated.c = nn.Conv2d(8, 8, 3, 1, 2, dilation=2, groups=8, bias=False)
    model = nn.Sequential(ConvNorm(3, 8, 3, stride=2), nn.ReLU(), ResidualDrop(ConvNorm(8, 8, 3, groups=8)),
                          ResidualDrop(dilated), ResidualDrop(ConvNorm(8, 8, 1, groups=2)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return randomise_bn(model, torch.Generator().manual_seed(seed)).eval()
