"""Building blocks of the exact deploy rewrites (docs/architecture.md, "Rewrites").

A rewrite changes the graph a layer exports, never the function it computes. The layers
offer them by duck typing, like ``switch_to_deploy``:

* ``absorb_batchnorm(bn) -> nn.Module``: a module equal to ``bn(layer(x))`` in eval mode,
  where the BN the host network applies after the layer moves inside it;
* ``rewritten() -> nn.Module``: a module equal to the layer, with a cheaper graph;
* ``input_split``: the channel counts a layer slices its input into. Where its input is
  a convolution's output (through a ReLU) used by nothing else, ``deploy.fold.rewrite`` splits
  that convolution instead (its output channels are independent convolutions) and hands
  the layer the parts as a tuple.

The helpers below shape the exported graph for ONNX Runtime's CPU kernels, which run
convolutions, pools, the nearest Upsample and same-shape Add/Mul in a blocked channel
layout (NCHWc) and leave it, with a reorder pass over the whole tensor each way, around
anything else (Sub, Slice, Split, ReduceMean, Softmax, Gather, a Mul by a constant or by a
per-channel vector). Each helper computes the textbook operation exactly, in an op that
stays in the blocked layout.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from deploy.layers.conv_bn import bn_scale_shift


class RewriteRefusedError(ValueError):
    """A layer cannot be rewritten exactly here; the message says why (it goes into the fold report)."""


def absorbed_scale_shift(bn: _BatchNorm, channels: int, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel affine map ``s·y + t`` of an eval-mode BN that follows ``layer``'s
    ``channels`` outputs; RewriteRefusedError when it does not match or cannot be folded."""
    if bn.num_features != channels:
        raise RewriteRefusedError(f"{bn} does not match {layer}'s {channels} output channels")
    try:
        return bn_scale_shift(bn)
    except ValueError as exc:
        raise RewriteRefusedError(str(exc)) from exc


def deploy_copy(layer: Any) -> Any:
    """A layer's deploy form for a rewrite: the layer itself once deployed, else a folded copy (the layer
    is never changed)."""
    if layer.deployed:
        return layer
    folded = copy.deepcopy(layer)
    folded.switch_to_deploy()
    return folded


def identity_affine(channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale 1, shift 0) per channel, in ``like``'s dtype and device: the affine map a layer's
    ``rewritten()`` absorbs when no BatchNorm follows it."""
    ones = torch.ones(channels, dtype=like.dtype, device=like.device)
    return ones, torch.zeros_like(ones)


class DeployRewrite(nn.Module):
    """Base of the modules the rewrites produce: already deploy forms (``switch_to_deploy`` is a
    no-op), so ``deploy.fold.fold`` traces around them as it does around the paper layers."""

    deployed = True

    def switch_to_deploy(self) -> None:
        """Nothing to fold: a rewrite's output is a deploy form."""


class ChannelScale(nn.Conv2d):
    """``x * weight[c] (+ bias[c])`` per channel: a depthwise 1x1 convolution.

    Exactly the per-channel multiply; a ``Mul`` by a constant vector would leave ONNX
    Runtime's blocked layout, while the convolution stays in it and takes a following Add
    and ReLU into the same kernel. Exported graphs get the convolution; eager torch
    multiplies directly (its float64 depthwise convolution runs one convolution per channel).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        channels = weight.numel()
        super().__init__(channels, channels, 1, groups=channels, bias=bias is not None,
                         device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.weight.copy_(weight.reshape(channels, 1, 1, 1))
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return super().forward(x)
        out = x * self.weight.reshape(1, -1, 1, 1)
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The (N, C, 1, 1) spatial mean as an average pooling over the whole (static) map.

    ``adaptive_avg_pool2d(x, 1)`` and ``x.mean((2, 3))`` export as ReduceMean, which ONNX
    Runtime runs outside the blocked layout; ``AveragePool`` with the map's size as the
    kernel is the same sum divided by H·W and stays in it.
    """
    return F.avg_pool2d(x, kernel_size=(int(x.shape[-2]), int(x.shape[-1])))


def broadcast_to_map(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (N, C, 1, 1) tensor repeated over ``like``'s H x W: a nearest upsampling by integer
    factors, which ONNX Runtime keeps in the blocked layout, so that the product with it is a
    same-shape Mul (a broadcasting Mul leaves the layout)."""
    h, w = int(like.shape[-2]), int(like.shape[-1])
    return F.interpolate(vector, scale_factor=(float(h), float(w)), mode="nearest")


class SplitConv2d(nn.Module):
    """A convolution computed as separate convolutions over consecutive output-channel ranges,
    each followed by the activation the original applied; ``forward`` returns the parts.

    Exact: every output channel of a convolution is its own convolution of the whole input.
    Consumers that slice the output along channels take the parts directly instead.
    """

    def __init__(self, conv: nn.Conv2d, sizes: Sequence[int], relu: bool) -> None:
        super().__init__()
        if conv.groups != 1 or sum(sizes) != conv.out_channels or min(sizes) < 1:
            raise RewriteRefusedError(f"cannot split {conv} into output channels {list(sizes)}")
        self.sizes = tuple(int(s) for s in sizes)
        self.relu = relu
        self.parts = nn.ModuleList()
        start = 0
        for size in self.sizes:
            self.parts.append(_conv_slice(conv, start, start + size))
            start += size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = tuple(part(x) for part in self.parts)
        return tuple(F.relu(o) for o in outs) if self.relu else outs


@torch.no_grad()
def _conv_slice(conv: nn.Conv2d, start: int, stop: int) -> nn.Conv2d:
    part = nn.Conv2d(conv.in_channels, stop - start, conv.kernel_size, stride=conv.stride,  # type: ignore[arg-type]
                     padding=conv.padding, dilation=conv.dilation,  # type: ignore[arg-type]
                     bias=conv.bias is not None, padding_mode=conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)
    part.weight.copy_(conv.weight[start:stop])
    if conv.bias is not None and part.bias is not None:
        part.bias.copy_(conv.bias[start:stop])
    return part
