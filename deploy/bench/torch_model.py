"""The `torch` backend of `deploy bench` and `deploy claims`: a checkpoint, loaded and folded, ready to time.

The model is what `deploy export` would export: ``deploy.pipeline.steps.load_step`` (checkpoint,
input shape, probe forward) and ``deploy.pipeline.steps.fold_step`` (the deploy form, folded in
float64 and rounded once), then moved to the device, dtype and memory format asked for
(``validators.runtimes.pytorch.TorchBenchRuntime``). ``fold=False`` times the training form,
which computes CoC's and DO-Conv's kernels in every forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.core.errors import BadInputError, LoadOptionsNeededError
from deploy.load.module import LoadedModel
from deploy.load.source import ModelSource
from deploy.pipeline.steps import fold_step, load_step
from validators.runtimes.pytorch import TorchBenchRuntime, check_torch_options, require_cuda


@dataclass(frozen=True)
class TorchBenchOptions:
    """How a checkpoint is timed on PyTorch."""

    device: str = "cpu"  # cpu | cuda
    dtype: str = "fp32"  # fp32 | fp16 | bf16
    cuda_graph: bool = False
    channels_last: bool = False
    fold: bool = True
    seed: int = 0  # of the fold's float64 probe input

    def check(self) -> None:
        """Bad values exit 2; a CUDA device PyTorch cannot see exits 5, both before any loading."""
        check_torch_options(self.device, self.dtype, self.cuda_graph)
        if self.device == "cuda":
            require_cuda()

    def describe(self) -> str:
        extras = [x for x, on in (("CUDA graph", self.cuda_graph), ("channels-last", self.channels_last)) if on]
        form = "folded" if self.fold else "training form"
        return f"{self.device}, {self.dtype}, {form}" + "".join(f", {x}" for x in extras)


def load_torch_runtime(checkpoint: Path, opts: TorchBenchOptions, input_size: tuple[int, int] | None = None,
                       threads: int | None = None) -> tuple[TorchBenchRuntime, LoadedModel]:
    """The timed runtime of ``checkpoint`` (its ``sample_shape`` is the (C, H, W) it takes) and the
    loaded model it runs (what the checkpoint records: meta, preprocessing). ``threads`` sets
    PyTorch's intra-op threads, for the whole process."""
    opts.check()
    try:
        loaded, input_shape = load_step(ModelSource(Path(checkpoint)), input_size=input_size)
    except LoadOptionsNeededError as exc:
        raise BadInputError(f"{exc.reason}; timing takes no options that load such a file: export it with "
                            "`deploy export` (which does) and time the .onnx file") from exc
    model = fold_step(loaded, input_shape, opts.seed)[0] if opts.fold else loaded.model
    runtime = TorchBenchRuntime(model.eval(), device=opts.device, dtype=opts.dtype, cuda_graph=opts.cuda_graph,
                                channels_last=opts.channels_last, threads=threads, sample_shape=input_shape,
                                name=f"torch-{opts.device}")
    return runtime, loaded


def open_torch_runtime(checkpoint: Path, opts: TorchBenchOptions, input_size: tuple[int, int] | None = None,
                       threads: int | None = None) -> TorchBenchRuntime:
    """The timed runtime of ``checkpoint`` alone (``load_torch_runtime``)."""
    return load_torch_runtime(checkpoint, opts, input_size, threads)[0]
