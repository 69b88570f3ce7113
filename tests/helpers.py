"""Test-only helpers shared by several test files."""

import torch
from torch import nn


def randomise_bn(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random eval statistics and affine parameters for every BatchNorm2d, so folds are really
    tested (identity BNs would hide a wrong fold). Returns ``module`` in eval mode."""
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                c, dt = bn.num_features, bn.weight.dtype
                bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=dt))
                bn.running_var.copy_(torch.empty(c, dtype=dt).uniform_(-3, 2, generator=gen).exp())
                bn.weight.copy_(torch.randn(c, generator=gen, dtype=dt))
                bn.bias.copy_(torch.randn(c, generator=gen, dtype=dt))
    return module.eval()
