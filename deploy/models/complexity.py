"""Parameter and multiply-accumulate (MAC) counts, in the two conventions the papers use.

The five papers report "FLOPs" that are MACs. ``count_macs`` counts what torch itself
counts: ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass at batch 1,
i.e. every convolution and matrix product (``nn.Conv2d``, ``F.conv2d``, ``nn.Linear``,
``matmul``, ``einsum``), each MAC two FLOPs — so MACs = FLOPs / 2. Biases, BatchNorm,
activations, pooling and element-wise ops count zero. Functional convolutions are
counted like modules (a forward-hook counter misses them), and a model on the ``meta``
device is counted without arithmetic.

``count_macs_thop`` reproduces the convention of thop (pytorch-OpCounter), which the
SPConv authors' field used for its tables: per module, convolutions and linear layers
as above, BatchNorm / LayerNorm 2 ops per element (4 with an affine transform), average
pooling one op per output element (adaptive: kernel elements + 1), upsampling by mode;
functional ops and activations zero. It gives plain ResNet-20 41.620 M, SPConv Table 1's
figure to the digit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deploy.core.errors import BadInputError


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


def weight_elements(model: nn.Module) -> int:
    """Elements of every parameter and buffer (each shared tensor once): what the model holds."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[id(t)] = t.numel()
    return sum(seen.values())


def largest_activation(model: nn.Module, input_shape: Sequence[int]) -> int | None:
    """Elements of the largest tensor any module outputs in one batch-1 forward pass of a model on
    the ``meta`` device (no arithmetic, no memory); None when the model cannot run there."""
    largest = 0

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        nonlocal largest
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                largest = max(largest, t.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.empty((1, *[int(s) for s in input_shape]), device="meta"))
    except (RuntimeError, NotImplementedError, ValueError, TypeError):
        return None
    finally:
        for h in handles:
            h.remove()
    return largest


def _example(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise BadInputError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return torch.randn((1, *shape), generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


def _forward(model: nn.Module, example: torch.Tensor) -> None:
    """One eval-mode forward pass; the model's training flag is restored afterwards."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)


def macs_by_module(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs each named module performs itself (its children's excluded), for one forward pass.

    A module called several times in one pass is counted each time; modules that perform
    none are left out. The root module's own work (functional ops in its ``forward``) is
    under ``""``.
    """
    with FlopCounterMode(display=False) as counter:
        _forward(model, example)
    flops = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    own: dict[str, int] = {}
    for name, module in model.named_modules():
        key = f"{root}.{name}" if name else root
        children = sum(flops.get(f"{key}.{child}", 0) for child, _ in module.named_children())
        macs = (flops.get(key, 0) - children) // 2
        if macs:
            own[name] = macs
    return own


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one image of shape ``input_shape`` = (C, H, W): FlopCounterMode's FLOPs / 2.

    The model runs once in eval mode on a random input of its own dtype and device; on the
    ``meta`` device only shapes flow, so full-size ImageNet counts take milliseconds.
    """
    example = _example(model, input_shape)
    with FlopCounterMode(display=False) as counter:
        _forward(model, example)
    return int(counter.get_total_flops()) // 2


def _conv(m: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    return y.numel() * (x.shape[1] // m.groups) * int(torch.tensor(m.weight.shape[2:]).prod())


def _norm(m: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    return 2 * x.numel() * (2 if affine else 1)


def _adaptive_avg(m: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    kernel = 1.0
    for a, b in zip(x.shape[2:], y.shape[2:]):
        kernel *= a / b
    return int((kernel + 1) * y.numel())


_UPSAMPLE = {"nearest": 1, "linear": 5, "bilinear": 11, "bicubic": 259}

#: thop 0.1.1's rules for the module types it knows (every other module: its children, or zero)
THOP_RULES: dict[type, Callable[[Any, torch.Tensor, torch.Tensor], float]] = {
    **{t: _conv for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                          nn.ConvTranspose3d)},
    **{t: _norm for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.InstanceNorm1d,
                          nn.InstanceNorm2d, nn.InstanceNorm3d, nn.SyncBatchNorm)},
    **{t: (lambda m, x, y: y.numel()) for t in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)},
    **{t: _adaptive_avg for t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)},
    nn.Linear: lambda m, x, y: m.in_features * y.numel(),
    nn.PReLU: lambda m, x, y: x.numel(),
    nn.Softmax: lambda m, x, y: (x.numel() // x.shape[m.dim]) * (3 * x.shape[m.dim] - 1),
    **{t: (lambda m, x, y: y.numel() * _UPSAMPLE.get(m.mode, 0))
       for t in (nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d)},
}


def count_macs_thop(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Operations of one image in thop's convention (see the module docstring)."""
    example = _example(model, input_shape)
    total = [0.0]

    def hook(rule: Callable[[Any, torch.Tensor, torch.Tensor], float]) -> Callable[..., None]:
        def count(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            total[0] += rule(module, inputs[0], output)

        return count

    ruled = [m for m in model.modules() if type(m) in THOP_RULES]
    handles = [m.register_forward_hook(hook(THOP_RULES[type(m)])) for m in ruled]
    try:
        _forward(model, example)
    finally:
        for h in handles:
            h.remove()
    return int(total[0])


def format_count(n: float, unit: str = "") -> str:
    """``25557032 -> '25.56 M'``: two decimals in the largest unit (K, M, G) not above ``n``."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()
