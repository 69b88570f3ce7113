"""Parameter and multiply-accumulate (MAC) counts, as the papers count them.

The five papers report "FLOPs" that are in fact MACs of the convolution and fully
connected layers (e.g. ResNet-50: 4.1 G, SPConv Table 2; IC Table 1; SCNet Table 1).
``count_macs`` therefore counts exactly those: a forward pass at batch 1 with hooks on
every ``nn.Conv2d`` and ``nn.Linear``, each contributing

* Conv2d: ``out_elements * (in_channels / groups) * kh * kw``
* Linear: ``out_elements * in_features``

Biases, BatchNorm, activations, pooling and element-wise ops count zero. Nothing is
hard-coded per architecture: the counts follow from the shapes the forward pass sees.
FLOPs, where a report wants them, are ``2 * MACs``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deploy.errors import BadInputError


def count_params(model: nn.Module) -> int:
    """Trainable parameters (``requires_grad``), each shared tensor once.

    Frozen tensors (DO-Conv's ``d_diag``, IC's all-ones window kernel) are not
    parameters the papers count, so they are left out.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def _linear_macs(module: nn.Linear, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def conv_linear_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs per named Conv2d/Linear module for one forward pass of ``example``.

    A module called several times in one pass is counted each time.
    """
    per_module: dict[str, int] = {}
    handles = []

    def make_hook(name: str, fn):
        def hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            per_module[name] = per_module.get(name, 0) + fn(module, out)

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(make_hook(name, _conv_macs)))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(make_hook(name, _linear_macs)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return per_module


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Conv2d + Linear MACs of one image of shape ``input_shape`` = (C, H, W).

    The model is run once in eval mode (its training flag is restored afterwards) on a
    random input of the model's own dtype and device. A model built on the ``meta``
    device (``with torch.device("meta"): build_model(...)``) is counted without any
    arithmetic: only shapes flow, so full-size ImageNet counts take milliseconds.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise BadInputError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    example = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    return sum(conv_linear_macs(model, example).values())


def format_count(n: float, unit: str = "") -> str:
    """``25557032 -> '25.56 M'``: two decimals in the largest unit (K, M, G) not above ``n``."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()
