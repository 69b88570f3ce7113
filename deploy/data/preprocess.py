"""Preprocessing that travels with a model: how an image file becomes the tensor the model was trained on.

A ``Recipe`` says it: resize (the shorter side to N keeping the aspect, or to HxW exactly), a
centre crop, colour (``rgb``, ``bgr`` or ``gray``) and how many channels the model takes (a grey
image is repeated into them), the value range (pixels divided by ``scale``: 255 gives [0, 1]),
then per-channel ``(x - mean) / std``. ``deploy zoo train`` records its recipe in the checkpoint,
``deploy export`` copies it (or ``preprocess``) into the ONNX metadata (``convdeploy.preprocess``,
JSON), and ``deploy eval`` reads it from there, so evaluating an exported file needs no flags.

Text form (``--preprocess``): a preset (``imagenet``, ``digits``) and/or ``key=value`` pairs
separated by ``;``, e.g. ``resize=256;crop=224;mean=0.485,0.456,0.406;std=0.229,0.224,0.225``.
Images are decoded and resized with Pillow.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from PIL import Image

from deploy.core.errors import BadInputError

COLORS = ("rgb", "bgr", "gray")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}
#: the ONNX metadata key and the checkpoint meta key of a recipe
METADATA_KEY, META_KEY = "convdeploy.preprocess", "preprocess"


@dataclass(frozen=True)
class Recipe:
    """How an image file becomes a model input (module docstring)."""

    resize: tuple[int, int] | int | None = None  # int: the shorter side; (H, W): exactly
    crop: tuple[int, int] | None = None  # centre crop (H, W)
    color: str = "rgb"
    channels: int = 3
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise BadInputError(f"preprocess color={self.color!r}: choose {', '.join(COLORS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise BadInputError(f"preprocess interpolation={self.interpolation!r}: choose {', '.join(INTERPOLATIONS)}")
        if self.channels not in (1, 3) or (self.color != "gray" and self.channels != 3):
            raise BadInputError(f"preprocess channels={self.channels}: 3 for rgb/bgr, 1 or 3 for gray")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels) or not all(math.isfinite(v) for v in values):
                raise BadInputError(f"preprocess {name}={','.join(map(str, values))}: give 1 or {self.channels} "
                                    "finite numbers")
        if any(v == 0 for v in self.std) or not (math.isfinite(self.scale) and self.scale > 0):
            raise BadInputError("preprocess std and scale must be non-zero (scale > 0)")
        sizes = [s for s in ((self.resize,) if isinstance(self.resize, int) else (self.resize or ())) + (self.crop or ())]
        if any(not isinstance(s, int) or s < 1 or s > 4096 for s in sizes):
            raise BadInputError(f"preprocess sizes must be integers in [1, 4096], got resize={self.resize}, "
                                f"crop={self.crop}")

    @property
    def output_hw(self) -> tuple[int, int] | None:
        """(H, W) of every image it makes, when fixed (a crop, or an exact resize)."""
        if self.crop is not None:
            return self.crop
        return self.resize if isinstance(self.resize, tuple) else None

    def apply(self, image: Image.Image) -> np.ndarray:
        """The (C, H, W) float32 model input for one decoded image."""
        image = image.convert("L" if self.color == "gray" else "RGB")
        image = self._resized(image)
        if self.crop is not None:
            image = _centre_crop(image, self.crop)
        x = np.asarray(image, dtype=np.float32)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        if self.color == "bgr":
            x = x[::-1]
        if x.shape[0] == 1 and self.channels == 3:
            x = np.repeat(x, 3, axis=0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return np.ascontiguousarray((x / np.float32(self.scale) - mean) / std, dtype=np.float32)

    def _resized(self, image: Image.Image) -> Image.Image:
        if self.resize is None:
            return image
        if isinstance(self.resize, int):
            w, h = image.size
            short = min(w, h)
            size = (max(1, round(w * self.resize / short)), max(1, round(h * self.resize / short)))
        else:
            size = (self.resize[1], self.resize[0])
        return image.resize(size, INTERPOLATIONS[self.interpolation]) if size != image.size else image

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BadInputError(f"preprocess recipe with unknown keys {unknown}: re-export the model")
        values = dict(d)
        for key in ("resize", "crop"):
            if isinstance(values.get(key), list):
                values[key] = tuple(int(v) for v in values[key])
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"the recorded preprocess recipe is not JSON ({exc.msg}): re-export the model") from None
        if not isinstance(data, dict):
            raise BadInputError("the recorded preprocess recipe is not a JSON object: re-export the model")
        return cls.from_dict(data)


PRESETS = {
    # torchvision's ImageNet evaluation: shorter side 256, centre 224, ImageNet statistics
    "imagenet": Recipe(resize=256, crop=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    # the bundled digits as `deploy zoo train` feeds them (deploy.models.digits): grey, 32x32, one mean/std
    "digits": Recipe(resize=(32, 32), color="gray", channels=3, mean=(0.30,), std=(0.38,)),
}


def _centre_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    w, h = image.size
    th, tw = size
    if th > h or tw > w:
        raise BadInputError(f"an image of {h}x{w} is smaller than the preprocess crop {th}x{tw}: resize it first "
                            "(preprocess resize=…)")
    left, top = round((w - tw) / 2), round((h - th) / 2)
    return image.crop((left, top, left + tw, top + th))


def _size(text: str) -> tuple[int, int] | int:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BadInputError(f"preprocess size {text!r}: give N or HxW") from None
    return values[0] if len(values) == 1 else (values[0], values[1])


def _parse_value(key: str, value: str) -> Any:
    if key in ("resize", "crop"):
        size = _size(value)
        return (size, size) if key == "crop" and isinstance(size, int) else size
    if key in ("mean", "std"):
        try:
            return tuple(float(v) for v in value.split(","))
        except ValueError:
            raise BadInputError(f"preprocess {key}={value!r}: give numbers separated by commas") from None
    if key == "channels":
        return int(value) if value.isdigit() else value
    if key == "scale":
        try:
            return float(value)
        except ValueError:
            raise BadInputError(f"preprocess scale={value!r}: give a number (255 for [0, 1])") from None
    return value.lower()


def parse_recipe(text: str, base: Recipe | None = None) -> Recipe:
    """``--preprocess`` text: presets and ``key=value`` pairs separated by ``;``, applied over ``base``."""
    recipe = base or Recipe()
    keys = {f.name for f in fields(Recipe)}
    for item in (p.strip() for p in text.split(";") if p.strip()):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            if key not in PRESETS:
                raise BadInputError(f"preprocess {item!r}: a preset ({', '.join(PRESETS)}) or key=value, keys "
                                    f"{', '.join(sorted(keys))}")
            recipe = PRESETS[key]
            continue
        if key not in keys:
            raise BadInputError(f"preprocess key {key!r}: choose {', '.join(sorted(keys))}")
        recipe = replace(recipe, **{key: _parse_value(key, value.strip())})
    return recipe
