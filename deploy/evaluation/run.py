"""`deploy eval` as one plain function: a deployed artifact's accuracy on the user's images.

Any artifact the tool makes or reads — a checkpoint on PyTorch (folded, or its training form),
an ONNX file on ONNX Runtime, an engine on TensorRT — is opened by ``deploy.bench.runtime``,
fed the data set's images through the preprocessing recipe the artifact records (or the one
given), batch by batch, and scored (``validators.accuracy``): top-1 and top-5 with their Wilson
intervals, per class, images per second. With ``vs`` a second artifact runs on the very same
batches and the two are compared pairwise (agreement, accuracy difference with its paired
interval, McNemar's exact p, the images that flip).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy.bench.artifacts import artifact_kind
from deploy.bench.runtime import open_runtime
from deploy.bench.torch_model import TorchBenchOptions, load_torch_runtime
from deploy.core.errors import BadInputError
from deploy.core.progress import SILENT, Progress
from deploy.data.datasets import DataSource, batches, open_data
from deploy.data.preprocess import META_KEY, METADATA_KEY, Recipe, parse_recipe
from validators.accuracy import AccuracyReport, Comparison, Scores, accuracy_report, compare_predictions, score
from validators.runtimes.base import Runtime
from validators.runtimes.tensorrt_env import load_engine_metadata

EVAL_FORMAT = "convdeploy-eval/1"


@dataclass
class ArtifactScore:
    """One artifact on the data: where it ran, its accuracy (None without labels) and its speed."""

    artifact: str
    runtime: dict[str, Any]
    accuracy: AccuracyReport | None
    images: int
    images_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "runtime": self.runtime, "images": self.images,
                "images_per_s": self.images_per_s,
                "accuracy": self.accuracy.to_dict() if self.accuracy is not None else None}


@dataclass
class EvalReport:
    """Everything `deploy eval` measured: the data, the recipe, each artifact, their comparison."""

    data: str
    recipe: dict[str, Any] | None
    model: ArtifactScore
    vs: ArtifactScore | None = None
    comparison: Comparison | None = None
    skipped: list[str] = field(default_factory=list)
    classes: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": EVAL_FORMAT, "data": self.data, "recipe": self.recipe, "classes": self.classes,
                "skipped": list(self.skipped), "model": self.model.to_dict(),
                "vs": self.vs.to_dict() if self.vs is not None else None,
                "comparison": self.comparison.to_dict() if self.comparison is not None else None}


@dataclass(frozen=True)
class EvalOptions:
    """How `deploy eval` runs (the CLI's defaults)."""

    preprocess: str | None = None  # recipe text over the artifact's own (``deploy.data.preprocess``)
    classes: Path | None = None
    batch: int = 32
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    skip_bad: bool = False
    device: str = "cpu"  # a checkpoint on PyTorch
    fold: bool = True  # a checkpoint: its deploy form (False: the training form)
    threads: int | None = None


def _recorded_recipe(runtime: Any, kind: str, path: Path, loaded_meta: dict[str, Any] | None) -> Recipe | None:
    """The recipe an artifact carries: ONNX metadata, a checkpoint's meta, an engine's record."""
    if kind == "onnx":
        text = runtime.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        return Recipe.from_json(text) if text else None
    if kind == "torch":
        recorded = (loaded_meta or {}).get(META_KEY)
        return Recipe.from_dict(recorded) if isinstance(recorded, dict) else None
    meta = load_engine_metadata(path) or {}
    return Recipe.from_json(meta["preprocess"]) if meta.get("preprocess") else None


class FixedBatch:
    """A runtime whose graph takes exactly ``size`` images: smaller batches are padded with zeros (their
    outputs dropped), larger ones split."""

    def __init__(self, runtime: Runtime, size: int) -> None:
        self.runtime, self.size, self.name = runtime, size, runtime.name

    def run(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, len(x), self.size):
            part = x[start:start + self.size]
            pad = self.size - len(part)
            if pad:
                part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), dtype=part.dtype)])
            outs.append(np.asarray(self.runtime.run(part))[: self.size - pad])
        return np.concatenate(outs)

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"output": self.run(x)}

    def describe(self) -> dict[str, Any]:
        return {**self.runtime.describe(), "fixed_batch": self.size}


def _fixed_batch(runtime: Any, kind: str) -> int | None:
    """The one batch size an ONNX graph or an engine takes, if it takes only one."""
    if kind == "onnx":
        dim = runtime.session.get_inputs()[0].shape[0]
        return dim if isinstance(dim, int) else None
    profile = getattr(runtime, "profile", None)
    return profile.min[0] if profile is not None and profile.min[0] == profile.max[0] else None


def open_artifact(path: Path, opts: EvalOptions, size: tuple[int, int] | None) -> tuple[Runtime, str, Recipe | None]:
    """The runtime of ``path`` (a fixed-batch graph wrapped in ``FixedBatch``), its kind and the recipe it records."""
    kind = artifact_kind(path)
    if kind == "torch":
        timed, loaded = load_torch_runtime(path, TorchBenchOptions(device=opts.device, fold=opts.fold, seed=opts.seed),
                                           size, opts.threads)
        return timed, kind, _recorded_recipe(timed, kind, path, loaded.meta)
    runtime = open_runtime(path, kind, threads=opts.threads if kind == "onnx" else None)
    recipe = _recorded_recipe(runtime, kind, path, None)
    fixed = _fixed_batch(runtime, kind)
    return (FixedBatch(runtime, fixed) if fixed is not None else runtime), kind, recipe


def resolve_recipe(recorded: Recipe | None, given: str | None, source: DataSource) -> Recipe | None:
    """The recipe to feed ``source`` with: ``given`` over ``recorded``; BadInputError when images need one and none is known."""
    if given is not None:
        return parse_recipe(given, base=recorded)
    if recorded is None and source.arrays is None:
        raise BadInputError("the model records no preprocessing recipe: give `preprocess` (a preset such as imagenet, "
                            "or resize=256;crop=224;mean=…;std=…), or record one with `deploy export`")
    return recorded


def _check_labels(source: DataSource, result: Scores) -> None:
    labels = [i.label for i in source.items if i.label is not None]
    if labels and max(labels) >= result.classes:
        raise BadInputError(f"the data has labels up to {max(labels)} but the model scores {result.classes} classes: "
                            "give the `classes` file in the model's class order")


def _artifact_score(path: Path, runtime: Runtime, result: Scores, source: DataSource) -> ArtifactScore:
    _check_labels(source, result)
    accuracy = None
    if source.labelled:
        labels = np.asarray([i.label for i in source.items if i.name not in source.skipped], dtype=np.int64)
        accuracy = accuracy_report(result.topk, labels, source.classes)
    return ArtifactScore(str(path), runtime.describe(), accuracy, result.images, result.images_per_s)


def evaluate(artifact: str | Path, data: str | Path, *, vs: str | Path | None = None,
             options: EvalOptions | None = None, progress: Progress = SILENT) -> EvalReport:
    """Accuracy of ``artifact`` (and ``vs``, on the same images) on ``data`` (module docstring)."""
    opts = options or EvalOptions()
    if isinstance(opts.batch, bool) or not isinstance(opts.batch, int) or not 1 <= opts.batch <= 4096:
        raise BadInputError(f"`batch` must be an integer in [1, 4096], got {opts.batch!r}")
    source = open_data(data, opts.classes).subset(opts.limit, opts.sample, opts.seed)
    given = parse_recipe(opts.preprocess) if opts.preprocess else None
    first, kind, recorded = open_artifact(Path(artifact), opts, given.output_hw if given else None)
    recipe = resolve_recipe(recorded, opts.preprocess, source)
    runtimes = [first]
    if vs is not None:
        runtimes.append(open_artifact(Path(vs), opts, recipe.output_hw if recipe else None)[0])
    results = score(runtimes, batches(source, recipe, opts.batch, skip_bad=opts.skip_bad), progress=progress,
                    total=len(source.items))
    if not results[0].images:
        raise BadInputError(f"no image of {source.description} could be read: nothing to evaluate")
    paths = [Path(artifact)] + ([Path(vs)] if vs is not None else [])
    scores = [_artifact_score(p, rt, r, source) for p, rt, r in zip(paths, runtimes, results)]
    comparison = None
    if vs is not None:
        kept = [i for i in source.items if i.name not in source.skipped]
        labels = np.asarray([i.label for i in kept], dtype=np.int64) if source.labelled else None
        comparison = compare_predictions(results[0].topk[:, 0], results[1].topk[:, 0], labels, [i.name for i in kept],
                                         seed=opts.seed)
    return EvalReport(source.description, recipe.to_dict() if recipe else None, scores[0],
                      scores[1] if vs is not None else None, comparison, list(source.skipped), source.classes)


def recipe_text(recipe: dict[str, Any] | None) -> str:
    """A recipe for a report line."""
    return json.dumps(recipe, sort_keys=True) if recipe else "none (preprocessed arrays)"
