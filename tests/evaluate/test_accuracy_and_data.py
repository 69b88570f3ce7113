"""The statistics (validators/accuracy.py), the recipes (deploy/data/preprocess.py) and the streamed data
sets (deploy/data/datasets.py), without a model."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

from deploy.core.errors import BadInputError
from deploy.data.datasets import batches, open_data
from deploy.data.preprocess import PRESETS, Recipe, parse_recipe
from validators.accuracy import accuracy_report, compare_predictions, wilson


def test_wilson_interval() -> None:
    # 95 % Wilson score interval of 8/10, by the closed form
    z, p, n = 1.959963984540054, 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    w = wilson(8, 10)
    assert w.value == 0.8 and w.low == pytest.approx(centre - half) and w.high == pytest.approx(centre + half)
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == 1.0


def test_accuracy_report_and_comparison() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 1])
    top = np.array([[0, 1, 2, 3, 4], [2, 1, 0, 3, 4], [2, 0, 1, 3, 4], [3, 0, 1, 2, 4], [0, 1, 2, 3, 5],
                    [5, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 0, 2, 3, 4]])
    rep = accuracy_report(top, labels, [str(i) for i in range(6)])
    assert rep.top1.value == 6 / 8 and rep.top5.value == 7 / 8 and rep.per_class["1"].value == 0.5
    a = top[:, 0]
    b = a.copy()
    b[[0, 6, 7]] = 5  # B gets three right answers wrong
    c = compare_predictions(a, b, labels, [f"i{k}" for k in range(8)])
    assert c.agreement.value == 5 / 8 and c.a_only_right == 3 and c.b_only_right == 0
    assert c.difference.value == pytest.approx(3 / 8) and c.mcnemar_p == pytest.approx(0.25)  # 2 * 0.5**3
    assert [f["image"] for f in c.flips] == ["i0", "i6", "i7"]
    same = compare_predictions(a, a, labels, [f"i{k}" for k in range(8)])
    assert same.difference.low == same.difference.high == 0.0 and same.mcnemar_p == 1.0


def test_recipes() -> None:
    r = parse_recipe("imagenet")
    assert r == PRESETS["imagenet"] and r.output_hw == (224, 224)
    r = parse_recipe("imagenet;crop=192;mean=0.5;std=0.25;color=bgr")
    assert r.crop == (192, 192) and r.mean == (0.5,) and r.color == "bgr" and r.resize == 256
    assert Recipe.from_json(r.to_json()) == r
    image = Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3) % 251)
    x = parse_recipe("resize=10;crop=8x6;scale=1").apply(image)
    assert x.shape == (3, 8, 6) and x.dtype == np.float32
    x = Recipe(color="bgr", scale=1.0).apply(image)
    assert np.array_equal(x[0], np.asarray(image, dtype=np.float32)[:, :, 2])
    for text, message in (("nope", "a preset"), ("crop=0", r"in \[1, 4096\]"), ("mean=1,2", "give 1 or 3"),
                          ("std=0", "non-zero"), ("color=cmyk", "choose rgb"), ("size=3", "key 'size'")):
        with pytest.raises(BadInputError, match=message):
            parse_recipe(text)


def test_streaming_keeps_memory_bounded(tmp_path) -> None:
    """2000 images of 64x64 decoded in batches of 16: the peak of traced memory stays far below what all the
    decoded inputs take (2000 x 3 x 64 x 64 float32 = 98 MB)."""
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / str(c)).mkdir()
        for i in range(1000):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / str(c) / f"{i}.png")
    source = open_data(tmp_path)
    tracemalloc.start()
    n = sum(len(b.items) for b in batches(source, Recipe(), 16))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 2000 and peak < 12 * 2**20, peak


def test_limit_sample_and_hashes(tmp_path) -> None:
    for i in range(6):
        Image.fromarray(np.full((4, 4), i * 10, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    source = open_data(tmp_path)
    assert not source.labelled and len(source.items) == 6
    assert [i.name for i in source.subset(limit=2).items] == ["0.png", "1.png"]
    sampled = source.subset(sample=3, seed=1)
    assert len(sampled.items) == 3 and sampled.items == source.subset(sample=3, seed=1).items
    assert len(source.content_hashes()) == 6
    with pytest.raises(BadInputError, match="`limit` must be a positive integer"):
        source.subset(limit=0)
