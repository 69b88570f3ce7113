"""The baseline conv kind: a plain ``nn.Conv2d``, and the figures the papers print for plain ResNets.

Every other kind is measured against it: the zoo compares each paper's network with its
plain twin, and ``deploy claims`` times everything against plain ResNet-50.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from deploy.layers.paper import THOP_NOTE, ClaimCheck, ClaimFacts, target
from deploy.layers.registry import ConvKind, ConvSpec, register_conv_kind


def plain_conv(role: str, spec: ConvSpec, options: Mapping[str, Any]) -> nn.Module:
    """A bias-free ``nn.Conv2d`` (a BatchNorm follows every conv of the zoo's networks)."""
    return nn.Conv2d(spec.in_channels, spec.out_channels, spec.kernel_size, stride=spec.stride,
                     padding=spec.padding, bias=False)


register_conv_kind(ConvKind(
    name="plain", title="plain", module=nn.Conv2d, roles=frozenset(), build=plain_conv,
    targets=(
        target("resnet18", "11.7 M", "1.82 G", "IC Table 1"),
        target("resnet34", "21.8 M", "3.68 G", "IC Table 1"),
        target("resnet50", "25.56 M", "4.1 G", "SPConv Table 2 (params); SCNet Table 1 MAdds "
               "(IC Table 1: 4.12 G, SPConv Table 2: 4.14 G)"),
        target("resnet101", "44.5 M", "7.8 G", "SCNet Table 1"),
        # SPConv Table 1 counts MACs as thop does: 41.62 M is thop's count of this network
        target("resnet20", "0.27 M", "41.62 M", "SPConv Table 1", convention="thop", note=THOP_NOTE),
    ),
    claim=ClaimFacts(ClaimCheck.BASELINE, subject="ResNet-50"),
    paper="He et al. 2016, Deep Residual Learning for Image Recognition",
))
