"""Fixtures of the evaluation tests: a digits-trained model, its export, and the digits' test split
written as an image folder of PNGs (what a user would bring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_digits_folder(root: Path, split: str = "test") -> Path:
    """The bundled digits' split as an ImageFolder of 8x8 grey PNGs (pixels 0..16 scaled to 0..255)."""
    from deploy.models.digits import SPLIT_SEED, TEST_FRACTION, _raw

    pixels, labels = _raw()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = int(round(len(labels) * TEST_FRACTION))
    rows = order[:n_test] if split == "test" else order[n_test:]
    for i in rows:
        folder = root / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        image = np.clip(np.round(pixels[i].reshape(8, 8) * 255 / 16), 0, 255).astype(np.uint8)
        Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, deploy_cli):
    """(checkpoint, its ONNX export, the digits test split as PNGs, the checkpoint's meta)."""
    import torch

    root = tmp_path_factory.mktemp("trained")
    ckpt, onnx_path = root / "m.pt", root / "m.onnx"
    run = deploy_cli("zoo", "train", "resnet20", "--conv", "plain", "--data", "digits", "--epochs", 2, "-o", ckpt)
    assert run.exit_code == 0, run.stderr
    run = deploy_cli("export", ckpt, "-o", onnx_path, "--samples", 1, "--exporter", "torchscript", "--no-rewrite-diff")
    assert run.exit_code == 0, run.stderr
    meta = torch.load(ckpt, weights_only=True)["meta"]
    return ckpt, onnx_path, write_digits_folder(root / "digits_png"), meta
