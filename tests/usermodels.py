"""Test-only user models a hostile user brought: each once made `deploy export` exit 1 (a bug)."""

import threading

import torch
from torch import nn


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv(y)


class BatchStatistics(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))


class FlattenHead(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 3))


class HoldsLock(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.lock = threading.Lock()


class EmptyOutput(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d((0, 1)))


class ThreeChannels(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 4, 3), nn.ReLU())


class Embedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x).sum(-1)


class BranchOnMean(nn.Module):
    """Data-dependent control flow: which conv runs depends on the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.a(x)
        return self.b(x)


class EigenHead(nn.Module):
    """An operator no exporter converts to ONNX (a symmetric eigendecomposition)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gram = x.flatten(2) @ x.flatten(2).transpose(1, 2)
        return torch.linalg.eigvalsh(gram)


def data_dependent() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), BranchOnMean())


def unconvertible() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), EigenHead())


class DictInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.conv(batch["image"]) * batch["scale"]


class ListInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, views: list) -> torch.Tensor:
        return self.conv(views[0]) - self.conv(views[1])
