"""The bundled digits data set (1797 real 8x8 images) as 32x32 tensors with a fixed split."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 20240607
TEST_FRACTION = 0.2
MEAN, STD = 0.30, 0.38  # of the pixels scaled to [0, 1], over the whole set


@dataclass
class Split:
    x: torch.Tensor  # (N, 3, S, S) float32, normalised
    y: torch.Tensor  # (N,) int64


def _raw() -> tuple[np.ndarray, np.ndarray]:
    blob = resources.files("deploy").joinpath("data/digits.csv.gz").read_bytes()
    table = np.loadtxt(gzip.decompress(blob).decode().splitlines(), delimiter=",", dtype=np.float32)
    return table[:, :64], table[:, 64].astype(np.int64)


def to_images(pixels: np.ndarray, size: int = 32) -> torch.Tensor:
    """8x8 grey digits (0..16) -> normalised 3-channel size x size images (bilinear upsampling)."""
    x = torch.from_numpy(pixels).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x - MEAN) / STD).repeat(1, 3, 1, 1).contiguous()


def load_digits(size: int = 32) -> tuple[Split, Split]:
    """(train, test): a fixed 80/20 split of the 1797 images, the same on every machine."""
    pixels, labels = _raw()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = int(round(len(labels) * TEST_FRACTION))
    test_idx, train_idx = order[:n_test], order[n_test:]
    images = to_images(pixels, size)
    y = torch.from_numpy(labels)
    return Split(images[train_idx], y[train_idx]), Split(images[test_idx], y[test_idx])
