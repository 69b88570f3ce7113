"""The bundled digits as a user would bring them: image folders of PNGs, and a model trained on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
