"""Calibration: the activation ranges of an fp32 ONNX model on real images, computed once and cached.

The images come from the same loaders and preprocessing as `deploy eval` (``deploy.data``):
an image folder, a flat folder, an ``.npz`` or the digits. ONNX Runtime's calibrator (MinMax,
Entropy or Percentile, ``deploy.quantize.recipes``) runs on them a few batches at a time, each
chunk folded into the ranges and freed (memory bounded whatever the data's size), and the ranges
go to ONNX Runtime's calibration cache, which every quantization of the model then reads (the
keep-float loop re-quantizes without re-calibrating). Fewer than ``MIN_IMAGES`` images is a
warning with the number; calibration images that are also evaluation images are refused (by the
sha256 of their bytes): a gate on the images the ranges were fitted to proves nothing.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from deploy.core.errors import BadInputError
from deploy.core.progress import SILENT, Progress
from deploy.data.datasets import DataSource, batches
from deploy.data.preprocess import Recipe
from deploy.quantize.recipes import CALIBRATOR_OPTIONS, QuantRecipe, method_of

#: below this many calibration images the ranges are a guess (warned, with the number)
MIN_IMAGES = 100
#: batches folded into the ranges per calibrator call (bounded memory)
CHUNK = 4


class _Batches(CalibrationDataReader):
    """ONNX Runtime's data reader over a few already preprocessed batches."""

    def __init__(self, input_name: str, arrays: list[np.ndarray]) -> None:
        self.input_name, self._arrays = input_name, iter(arrays)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._arrays, None)
        return None if x is None else {self.input_name: x}


def check_disjoint(calib: DataSource, held_out: DataSource) -> None:
    """BadInputError when an image is both a calibration and an evaluation image (same bytes)."""
    shared = set(calib.content_hashes()) & set(held_out.content_hashes())
    if shared:
        names = sorted(calib.content_hashes()[h] for h in shared)
        raise BadInputError(f"{len(shared)} calibration image(s) are also evaluation images ({', '.join(names[:3])}"
                            f"{' …' if len(names) > 3 else ''}): give held-out `eval` images disjoint from `calib`")


def calibration_warnings(calib: DataSource) -> list[str]:
    """What a user should know about the calibration set before trusting it."""
    n = len(calib.items)
    return [f"calibrating on {n} image(s), fewer than {MIN_IMAGES}: the activation ranges may not cover what the "
            "model sees; give more `calib` images"] if n < MIN_IMAGES else []


def _chunks(source: DataSource, recipe: Recipe | None, batch: int) -> Iterator[list[np.ndarray]]:
    chunk: list[np.ndarray] = []
    for b in batches(source, recipe, batch):
        chunk.append(b.x)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def calibrate(model_path: Path, calib: DataSource, preprocess: Recipe | None, recipe: QuantRecipe, method: str,
              cache: Path, *, batch: int = 8, progress: Progress = SILENT) -> Path:
    """Compute the activation ranges of ``model_path`` on ``calib`` with ``method``; write them to ``cache``
    (ONNX Runtime's calibration cache) and return it."""
    op_types: Any = list(recipe.op_types) if recipe.op_types else sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    progress.task(f"calibrating ({method})", len(calib.items))
    with tempfile.TemporaryDirectory(prefix="convdeploy-calib.") as tmp:
        shaped = Path(tmp) / "model.onnx"  # what quantize_static calibrates: the shape-inferred model
        onnx.save(load_model_with_shape_infer(model_path), str(shaped))
        calibrator = create_calibrator(shaped, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=method_of(method), extra_options=CALIBRATOR_OPTIONS[method])
        with contextlib.redirect_stdout(io.StringIO()):  # ONNX Runtime's calibrators print their progress
            for chunk in _chunks(calib, preprocess, batch):
                calibrator.collect_data(_Batches(input_name, chunk))
                progress.update(advance=sum(len(x) for x in chunk))
            ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)
    return cache
