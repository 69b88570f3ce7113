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


def spread_cnn(seed: int = 0, gain: float = 4.0) -> nn.Module:
    """A small CNN whose 10 logits are far apart: the head reads standardised features through
    orthonormal rows scaled by ``gain``, so the top-1/top-2 margin is mostly ~10 % of max|logit|
    (an fp16 error bound is 1 %) while the winning class still varies with the input. Random
    heads put logits within fp16 error of each other, where one flipped row is noise."""
    import numpy as np

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    calib = torch.from_numpy(np.random.default_rng(seed + 123).standard_normal((256, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        feats = model[:-1](calib)
        mean, std = feats.mean(0), feats.std(0) + 1e-6
        rows, _ = torch.linalg.qr(torch.randn(32, 10, generator=torch.Generator().manual_seed(seed + 1)))
        weight = gain * rows.T / std
        model[-1].weight.copy_(weight)
        model[-1].bias.copy_(-(weight @ mean))
    return model


def gated_cnn(seed: int = 0) -> nn.Module:
    """A small CNN with the gates an fp16 conversion must keep in fp32: a sigmoid gate on a
    feature map (SCConv's) and a softmax over two branches (SPConv's), ending in a spread head."""
    torch.manual_seed(seed)
    head = spread_cnn(seed)

    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.gate = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)
            self.head = head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x) * torch.sigmoid(self.gate(x))
            w = torch.softmax(torch.stack((y.mean((2, 3)), x.mean((2, 3))), dim=2), dim=2)
            return self.head(w[..., :1, None] * y + w[..., 1:, None] * x)

    return Gated().eval()


#: the ONNX IR version of hand-built test graphs: onnx 1.23 writes IR 14 by default, which
#: onnxruntime < 1.32 refuses, and the package supports onnxruntime >= 1.20 (IR <= 10)
PORTABLE_IR = 10


class MaskedLogits(nn.Module):
    """Logits of a small CNN with one class masked to -inf (a common trick for excluded classes):
    parity must compare the finite logits and demand the -inf where the reference has it."""

    def __init__(self, classes: int = 5, masked: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, classes)
        mask = torch.zeros(classes, dtype=torch.bool)
        mask[masked] = True
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)).masked_fill(self.mask, -float("inf"))
