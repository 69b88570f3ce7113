"""A toy sixth conv kind, written as a new paper's layer would be: one file, one registration.

``ToyConv2d`` trains a kernel ``W`` and a per-layer scalar ``gain`` and convolves with
``gain * W`` (plus ``bias``); its deploy form is one ``nn.Conv2d`` with that kernel. The
tests register ``TOY`` with one ``register_conv_kind(TOY)`` call and drop it afterwards.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from deploy.layers.conv_bn import conv2d_from_kernel, install_kernel
from deploy.layers.registry import ConvKind, ConvSpec, ZooVariant, options_from_signature


class ToyConv2d(nn.Module):
    """``y = conv(x, gain * W) + bias``: folds exactly into one convolution."""

    folds_to_conv = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False, gain: float = 1.0, learn_gain: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kernel_size, kernel_size), (stride, stride), (padding, padding)
        self.dilation, self.groups, self.padding_mode = (1, 1), 1, "zeros"
        self.W = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.W, a=math.sqrt(5))
        self.gain = nn.Parameter(torch.tensor(float(gain)), requires_grad=learn_gain)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.deployed = False

    def composite_kernel(self) -> torch.Tensor:
        return self.weight if self.deployed else self.gain * self.W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.composite_kernel(), self.bias, self.stride, self.padding)

    @torch.no_grad()
    def to_conv2d(self) -> nn.Conv2d:
        return conv2d_from_kernel(self, self.composite_kernel(), self.bias)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        install_kernel(self, ["W", "gain"])


def _build(role: str, spec: ConvSpec, options: Mapping[str, Any]) -> ToyConv2d:
    return ToyConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, spec.stride, spec.padding, **options)


TOY = ConvKind(
    name="toy", title="Toy", module=ToyConv2d, build=_build, roles=frozenset({"block3x3"}),
    options=options_from_signature(ToyConv2d, ("gain", "learn_gain"), help={"gain": "initial kernel scale"},
                                   bounds={"gain": (-1000.0, 1000.0)}),
    variants=(ZooVariant(), ZooVariant((("gain", 2.0),), "gain=2", "g2")),
)
