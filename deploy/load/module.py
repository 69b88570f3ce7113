"""A loaded model and what it must be before convdeploy folds and exports it: in eval mode, with real
float32 weights, BatchNorms that use running statistics, all finite; its identity (``sha256``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deploy.core.errors import BadInputError


@dataclass
class LoadedModel:
    """A model ready for folding, with what is known about where it came from."""

    model: nn.Module
    # convdeploy | state_dict | model-class | reference-scnet | reference-spconv | reference-doconv | pickle
    # | exported-program | python (an in-memory module)
    source: str
    sha256: str
    arch: str | None = None
    conv: str | None = None
    conv_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    program_dims: tuple[int | None, ...] | None = None  # an ExportedProgram's input dims (None: symbolic)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "arch": self.arch,
            "conv": self.conv,
            "conv_kwargs": self.conv_kwargs,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape) if self.input_shape else None,
        }


def check_finite_weights(model: nn.Module) -> None:
    """Refuse weights or buffers holding NaN or Inf (a diverged run or a corrupt file)."""
    bad = [
        name
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise BadInputError(
            f"NaN or Inf in the weights ({short_list(bad)}): the checkpoint is from a diverged or corrupt run; "
            "export an earlier checkpoint or retrain"
        )


def check_eval_mode(model: nn.Module, what: str) -> None:
    """BadInputError unless ``model`` and every submodule are in eval mode (BatchNorm and dropout in
    training mode make no fold exact and no two runs equal)."""
    training = [name or "(root)" for name, m in model.named_modules() if m.training]
    if training:
        shown = ", ".join(training[:3]) + (f" (+{len(training) - 3} more)" if len(training) > 3 else "")
        raise BadInputError(f"{what} has modules in training mode ({shown}): call model.eval() first (BatchNorm and "
                            "dropout behave differently in training mode, and no fold is exact)")


def module_sha256(model: nn.Module) -> str:
    """sha256 over an in-memory module's state_dict (names, dtypes, shapes, values): its identity in reports."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def check_module(model: nn.Module, what: str) -> None:
    """What a module must be before convdeploy folds and exports it: in eval mode, holding real float32
    weights, with BatchNorms that use running statistics, all finite (BadInputError naming the fix)."""
    check_eval_mode(model, what)
    params = list(model.named_parameters())
    if any(p.is_meta for _, p in params):
        raise BadInputError(f"{what} holds weights on the meta device (shapes without values): load real weights "
                            "first (e.g. load_state_dict(..., assign=True))")
    other = sorted({str(p.dtype) for _, p in params if p.is_floating_point() and p.dtype != torch.float32})
    if other:
        raise BadInputError(f"{what} holds {', '.join(other)} weights: convdeploy folds and exports float32 models "
                            "(and builds fp16 engines from them); call model.float() first")
    batch_stats = [name for name, m in model.named_modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats]
    if batch_stats:
        raise BadInputError(f"{what} has BatchNorm layers without running statistics ({', '.join(batch_stats[:3])}: "
                            "track_running_stats=False): they normalise each batch by its own statistics even in eval "
                            "mode, so an image's output depends on the others; give them running statistics first")
    check_finite_weights(model)


def loaded_module(model: nn.Module, source: str, digest: str, what: str) -> LoadedModel:
    check_module(model, what)
    return LoadedModel(model, source, digest, input_shape=getattr(model, "input_shape", None))


def loaded_from_module(model: nn.Module) -> LoadedModel:
    """An in-memory module (the Python API) as a ``LoadedModel``; it is not copied and never modified."""
    if not isinstance(model, nn.Module):
        raise BadInputError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    check_module(model, "`model`")
    return LoadedModel(model, "python", module_sha256(model), input_shape=getattr(model, "input_shape", None))


def short_list(items: list[str], limit: int = 8) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")
