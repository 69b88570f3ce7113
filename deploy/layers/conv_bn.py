"""What the layers share: exact Conv+BatchNorm fusion, the plain ``nn.Conv2d`` every fold into one
convolution produces, and ``FoldsToConv``, the base of the layers that fold into one (CoC, DO-Conv).

BN in eval mode is the per-channel affine map y = s * (x - mu) + beta with
s = gamma / sqrt(var + eps); after a convolution with kernel W and bias b it is a
convolution with kernel s * W and bias s * (b - mu) + beta.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class ConvGeometry(Protocol):
    """What a fold target copies from the layer it replaces (``nn.Conv2d`` has all of it)."""

    @property
    def stride(self) -> tuple[int, ...]: ...

    @property
    def padding(self) -> Any: ...  # a tuple of ints, or 'same' / 'valid'

    @property
    def dilation(self) -> tuple[int, ...]: ...

    @property
    def groups(self) -> int: ...

    @property
    def training(self) -> bool: ...


def bn_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an eval-mode BatchNorm, using the module's own eps."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} has no running statistics (track_running_stats=False): it cannot be folded")
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - bn.running_mean * scale


def fuse_conv_bn_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: _BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of conv-then-BN as one convolution (exact, any groups)."""
    scale, shift = bn_scale_shift(bn)
    fused_w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    fused_b = shift if bias is None else bias * scale + shift
    return fused_w, fused_b


@torch.no_grad()
def conv2d_from_kernel(layer: ConvGeometry, kernel: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with ``layer``'s geometry (stride, padding, dilation, groups,
    padding_mode) holding ``kernel`` and ``bias``: the target of every fold into one conv."""
    conv = nn.Conv2d(
        kernel.shape[1] * layer.groups,
        kernel.shape[0],
        (kernel.shape[2], kernel.shape[3]),
        stride=_pair2(layer.stride),
        padding=layer.padding if isinstance(layer.padding, str) else _pair2(layer.padding),
        dilation=_pair2(layer.dilation),
        groups=layer.groups,
        bias=bias is not None,
        padding_mode=getattr(layer, "padding_mode", "zeros"),
        device=kernel.device,
        dtype=kernel.dtype,
    )
    conv.weight.copy_(kernel)
    if bias is not None and conv.bias is not None:
        conv.bias.copy_(bias)
    conv.train(layer.training)
    return conv


@torch.no_grad()
def install_kernel(layer: Any, drop: list[str]) -> None:
    """``switch_to_deploy`` of a layer that folds into one conv: compute ``layer.composite_kernel()``,
    delete the training-form attributes ``drop``, keep ``weight`` then ``bias`` (``nn.Conv2d``'s
    key order) and set ``layer.deployed``. Idempotent."""
    if layer.deployed:
        return
    kernel = layer.composite_kernel().detach().clone()
    bias = layer._parameters.pop("bias")
    for name in drop:
        if hasattr(layer, name):
            delattr(layer, name)
    layer.weight = nn.Parameter(kernel)
    layer.register_parameter("bias", bias)
    layer.deployed = True


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """A new ``nn.Conv2d`` equal to ``bn(conv(x))`` in eval mode; inputs are not modified."""
    return conv2d_from_kernel(conv, *fuse_conv_bn_weights(conv.weight, conv.bias, bn))


def eager(x: torch.Tensor) -> bool:
    """True when shapes are concrete Python ints (not under torch.fx or jit tracing): a layer's shape
    checks run only then."""
    return not isinstance(x, torch.fx.Proxy) and not torch.jit.is_tracing()


class FoldsToConv(nn.Module):
    """Base of a layer that folds into one ``nn.Conv2d``: its ``nn.Conv2d`` geometry (checked),
    ``to_conv2d()`` holding ``composite_kernel()``, and the geometry part of its repr. The layer
    computes its kernel and names the training attributes its ``switch_to_deploy`` drops."""

    folds_to_conv = True
    weight: torch.Tensor  # the folded kernel, once deployed
    bias: torch.Tensor | None

    def _init_geometry(self, owner: str, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                       stride: int | tuple[int, int], padding: int | tuple[int, int], dilation: int | tuple[int, int],
                       groups: int, padding_mode: str = "zeros") -> None:
        check_channels(owner, in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = int_pair(kernel_size, "kernel_size", 1, owner)
        self.stride = int_pair(stride, "stride", 1, owner)
        self.padding = int_pair(padding, "padding", 0, owner)
        self.dilation = int_pair(dilation, "dilation", 1, owner)
        self.padding_mode = padding_mode
        self.deployed = False

    def composite_kernel(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def to_conv2d(self) -> nn.Conv2d:
        """A new plain ``nn.Conv2d`` holding the composite kernel (the exact fold)."""
        return conv2d_from_kernel(self, self.composite_kernel(), self.bias)

    def geometry_repr(self, options: str) -> str:
        """``nn.Conv2d``'s repr of the geometry, then the layer's ``options``, then ``deployed``."""
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"]
        parts += [f"{k}={v}" for k, v, plain in (("padding", self.padding, (0, 0)), ("dilation", self.dilation, (1, 1)),
                                                  ("groups", self.groups, 1)) if v != plain]
        if self.bias is None:
            parts.append("bias=False")
        if self.padding_mode != "zeros":
            parts.append(f"padding_mode={self.padding_mode}")
        return ", ".join(parts + [options] + (["deployed"] if self.deployed else []))


def check_channels(owner: str, in_channels: int, out_channels: int, groups: int) -> None:
    """ValueError unless the channel counts and groups make a valid grouped convolution."""
    if in_channels < 1 or out_channels < 1 or groups < 1:
        raise ValueError(f"{owner}: in_channels={in_channels}, out_channels={out_channels}, groups={groups} "
                         "must all be >= 1")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{owner}: in_channels={in_channels} and out_channels={out_channels} must both be "
                         f"divisible by groups={groups}")


def int_pair(value: int | tuple[int, int], name: str, minimum: int, owner: str) -> tuple[int, int]:
    """One or two integers >= ``minimum`` as a pair, or a ValueError naming ``owner`` and ``name``."""
    if isinstance(value, str):
        raise ValueError(f"{owner}: string {name}={value!r} is not supported; pass integer(s)")
    items = (value, value) if isinstance(value, int) else tuple(value)
    if len(items) != 2 or any(int(v) < minimum for v in items):
        raise ValueError(f"{owner}: {name}={value!r} must be one or two integers >= {minimum}")
    return (int(items[0]), int(items[1]))


def _pair2(value: Any) -> tuple[int, int]:
    """``nn.Conv2d``'s 2-tuples (its attributes are typed as variable-length tuples)."""
    return (int(value[0]), int(value[1]))
