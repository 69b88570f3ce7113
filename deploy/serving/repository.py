"""A Triton model repository for checked artifacts: ``REPO/NAME/config.pbtxt`` and
``REPO/NAME/1/model.onnx`` (platform ``onnxruntime_onnx``) or ``model.plan`` (``tensorrt_plan``),
written both-or-neither (docs/architecture.md "Writes").

``plan_repository`` turns the artifacts and the options into a ``RepositoryPlan`` (the config and
the files to copy) without touching the disk; ``write_repository`` writes it in one transaction.
Several engines of one model (one per GPU architecture) become ``cc_model_filenames``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from deploy.core.atomic import Transaction, output_lock
from deploy.core.errors import BadInputError
from deploy.serving.artifact import ENGINE, ONNX, ServedArtifact
from deploy.serving.model_config import DynamicBatching, ModelConfig, OrtTensorRT, TensorConfig, Warmup, triton_dtype
from deploy.serving.triton_releases import container_hint

PLATFORMS = {ONNX: "onnxruntime_onnx", ENGINE: "tensorrt_plan"}
FILENAMES = {ONNX: "model.onnx", ENGINE: "model.plan"}
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
#: the largest max_batch_size, instance count and queue delay accepted
MAX_BATCH, MAX_INSTANCES, MAX_QUEUE_DELAY_US = 4096, 64, 10_000_000
#: max_batch_size of an ONNX file with a dynamic batch axis when none is given
DEFAULT_MAX_BATCH = 8
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class TritonOptions:
    """What ``deploy triton`` is asked for (``None``: the artifact's own value or the default)."""

    name: str
    max_batch: int | None = None
    instances: int = 1
    kind: str = "gpu"
    dynamic_batching: bool = True
    preferred_batch: tuple[int, ...] = ()
    queue_delay_us: int = 100
    ort_tensorrt: str | None = None  # None, "fp32" or "fp16"
    backend: str | None = None  # "python": the config of `deploy serve` (the ONNX runs in model.py)
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RepositoryPlan:
    """The files of one model directory: the config text, and artifact -> file name in the version folder."""

    name: str
    config: ModelConfig
    files: tuple[tuple[Path, str], ...]
    notes: tuple[str, ...] = ()

    def paths(self, repo: Path) -> list[Path]:
        """Every file written under ``repo``, the config last."""
        model_dir = repo / self.name
        return [model_dir / "1" / filename for _, filename in self.files] + [model_dir / "config.pbtxt"]


def check_name(name: str) -> str:
    """A model name Triton and a file system both take; BadInputError otherwise."""
    if not _NAME.match(name) or name in (".", ".."):
        raise BadInputError(f"`name` {name!r}: use letters, digits, '_', '-' and '.' only")
    return name


def default_name(path: Path) -> str:
    """The artifact's stem with anything a model name cannot hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).strip(".") or "model"


def _check_numbers(opts: TritonOptions, max_batch: int) -> None:
    if opts.kind not in KINDS:
        raise BadInputError(f"`kind` {opts.kind!r}: choose cpu or gpu")
    if not 1 <= opts.instances <= MAX_INSTANCES:
        raise BadInputError(f"`instances` {opts.instances}: give 1 to {MAX_INSTANCES}")
    if not 0 <= opts.queue_delay_us <= MAX_QUEUE_DELAY_US:
        raise BadInputError(f"`queue_delay_us` {opts.queue_delay_us}: give 0 to {MAX_QUEUE_DELAY_US}")
    bad = [b for b in opts.preferred_batch if not 1 <= b <= max_batch]
    if bad:
        raise BadInputError(f"`preferred_batch` {bad} outside 1..{max_batch} (the model's max_batch_size)")
    if opts.ort_tensorrt not in (None, "fp32", "fp16"):
        raise BadInputError(f"`ort_tensorrt` {opts.ort_tensorrt!r}: choose fp32 or fp16")


def max_batch_size(art: ServedArtifact, asked: int | None) -> int:
    """Triton's max_batch_size: 0 for a fixed batch axis; else ``asked`` (within the engine's profile)."""
    if not art.batch_dynamic:
        if asked is not None:
            raise BadInputError(f"{art.path} has a fixed batch axis, so Triton cannot batch it (max_batch_size 0): "
                                "drop `max_batch` or re-export with a dynamic batch")
        return 0
    limit = art.max_batch if art.max_batch is not None else MAX_BATCH
    size = asked if asked is not None else (art.max_batch or DEFAULT_MAX_BATCH)
    if not 1 <= size <= limit:
        where = "the engine's profile" if art.max_batch is not None else "the accepted range"
        raise BadInputError(f"`max_batch` {size}: give 1 to {limit} ({where})")
    return size


def _tensors(art: ServedArtifact, batching: bool, inputs: bool) -> tuple[TensorConfig, ...]:
    tensors = art.inputs if inputs else art.outputs
    return tuple(TensorConfig(t.name, triton_dtype(t.dtype, t.name),
                              tuple(-1 if d is None else d for d in (t.shape[1:] if batching else t.shape)))
                 for t in tensors)


def _warmup(art: ServedArtifact, batching: bool) -> Warmup | None:
    if art.input_shape is None:
        return None
    inp = art.inputs[0]
    dims = art.input_shape if batching else (inp.shape[0] or 1, *art.input_shape)
    return Warmup("random sample", 1, (TensorConfig(inp.name, triton_dtype(inp.dtype, inp.name), tuple(dims)),))


def _engines(arts: Sequence[ServedArtifact]) -> tuple[dict[str, str], tuple[tuple[Path, str], ...]]:
    """cc_model_filenames and the files of several engines of one model (one per compute capability)."""
    first = arts[0]
    files, ccs = [], {}
    for art in arts:
        if art.kind != ENGINE:
            raise BadInputError(f"{art.path}: several artifacts make one model only when all are engines (.plan)")
        if (art.inputs, art.outputs, art.max_batch) != (first.inputs, first.outputs, first.max_batch):
            raise BadInputError(f"{art.path} and {first.path} differ in inputs, outputs or batch profile: build "
                                "every engine of a model from one ONNX with one profile")
        if art.tensorrt_version != first.tensorrt_version:
            raise BadInputError(f"{art.path} was built with TensorRT {art.tensorrt_version}, {first.path} with "
                                f"{first.tensorrt_version}: one Triton container runs one TensorRT; rebuild them")
        cc = str(art.compute_capability)
        if cc in ccs:
            raise BadInputError(f"two engines for compute capability {cc}: give one engine per GPU architecture")
        ccs[cc] = f"model_sm{cc.replace('.', '')}.plan"
        files.append((art.path, ccs[cc]))
    return ccs, tuple(files)


def _comments(art: ServedArtifact) -> tuple[str, ...]:
    if art.kind != ENGINE:
        return (f"written by convdeploy from {art.path.name}",)
    return (f"written by convdeploy from {art.path.name}: TensorRT {art.tensorrt_version}, compute capability "
            f"{art.compute_capability} ({art.gpu_name})", container_hint(str(art.tensorrt_version)))


def plan_repository(arts: Sequence[ServedArtifact], opts: TritonOptions) -> RepositoryPlan:
    """The model directory for ``arts`` (one artifact, or one engine per GPU architecture)."""
    if not arts:
        raise BadInputError("give an artifact to serve")
    art = arts[0]
    check_name(opts.name)
    size = max_batch_size(art, opts.max_batch)
    _check_numbers(opts, max(size, 1))
    if art.kind == ENGINE and opts.kind != "gpu":
        raise BadInputError("a TensorRT engine runs on a GPU only: drop `kind` cpu")
    if opts.ort_tensorrt and (art.kind != ONNX or opts.kind != "gpu" or opts.backend):
        raise BadInputError("`ort_tensorrt` applies to an .onnx served on a GPU by ONNX Runtime only")
    ccs, files = _engines(arts) if len(arts) > 1 else ({}, ((art.path, FILENAMES[art.kind]),))
    batching = size > 0
    dynamic = DynamicBatching(tuple(opts.preferred_batch), opts.queue_delay_us) \
        if batching and opts.dynamic_batching else None
    warmup = _warmup(art, batching)
    config = ModelConfig(
        name=opts.name, max_batch_size=size, inputs=_tensors(art, batching, True), outputs=_tensors(art, batching, False),
        platform=None if opts.backend else PLATFORMS[art.kind], backend=opts.backend,
        instance_count=opts.instances, instance_kind=KINDS[opts.kind], dynamic_batching=dynamic, warmup=warmup,
        ort_tensorrt=OrtTensorRT(opts.ort_tensorrt.upper()) if opts.ort_tensorrt else None,
        cc_model_filenames=ccs, parameters=dict(opts.parameters), comments=_comments(art))
    notes = () if warmup else ("no model_warmup: the input's height and width are dynamic and the file records no "
                               "input shape",)
    return RepositoryPlan(opts.name, config, files, notes)


@contextlib.contextmanager
def _new_dirs(*dirs: Path) -> Iterator[None]:
    """Create the missing ``dirs`` (parents first); remove those created here if the block fails."""
    made: list[Path] = []
    try:
        for d in dirs:
            if d.exists() and not d.is_dir():
                raise BadInputError(f"{d} is a file, not a directory: choose another repository or name")
            if not d.exists():
                d.mkdir()
                made.append(d)
        yield
    except BaseException:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def write_repository(plan: RepositoryPlan, repo: Path, extra: Sequence[tuple[str, bytes]] = ()) -> list[Path]:
    """Write the model directory of ``plan`` under ``repo`` (which must exist): the artifacts copied into
    the version folder, ``extra`` (file name, bytes) beside them, and config.pbtxt; all or none."""
    if not repo.is_dir():
        raise BadInputError(f"model repository {repo} is not a directory: create it first (mkdir -p {repo})")
    model_dir = repo / plan.name
    version = model_dir / "1"
    config_path = model_dir / "config.pbtxt"
    with _new_dirs(model_dir, version), output_lock(config_path), Transaction() as txn:
        for source, filename in plan.files:
            tmp = txn.reserve(version / filename)
            shutil.copyfile(source, tmp)
            txn.seal(tmp)
        for filename, data in extra:
            txn.stage_bytes(version / filename, data)
        txn.stage_bytes(config_path, plan.config.to_pbtxt().encode())
        txn.commit()
    return plan.paths(repo) + [version / f for f, _ in extra]
