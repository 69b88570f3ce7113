"""IC layer: Inter-layer Collision convolution (IC Networks, Sec. 3.1-3.4, Eq. 3, 6, 7).

Re-implementation from the paper's equations: no public code of the IC layer exists,
so every detail below that the paper leaves open is a documented choice.

The IC neuron (Eq. 3) applied to convolution (Eq. 6) with the scaling factor of Eq. 7:

    u = W ⊗ X + b2 + α · ReLU(W ⊗ X − W' · (1 ⊗̂ X) + b1)

* ``W ⊗ X``: an ordinary k×k convolution (``self.conv``, no bias of its own).
* ``1 ⊗̂ X``: the all-ones *depthwise* convolution, i.e. the per-channel window sum,
  with the same kernel size, stride, padding and dilation as W (Eq. 6: "all the
  convolution operators share the same stride and padding"). It is an
  ``nn.Conv2d(groups=C_in)`` whose ones kernel is frozen (``requires_grad=False``), so
  a hook-based MAC counter sees it, while the parameter count (trainable parameters
  only) does not include it -- the paper says the sum adds no parameters (Sec. 3.4).
* ``W'``: the adjustment weights, a C_out × C_in matrix applied channel-wise to the
  window sums, i.e. a 1×1 convolution (``self.adjust``; Sec. 3.4 "can be regarded as
  a 1×1 convolution").
* ``b1`` (inside the ReLU, shifts the hyperplane) and ``b2`` (outside, the usual
  conv bias; ``bias=True``) are the two independent biases of Eq. 3. ``b1`` is always
  present: without it the hyperplane cannot be shifted (Theorem 2 needs it).
* ``α`` (Eq. 7): one scalar per layer scaling the ReLU branch. The paper sets it to 0
  when an IC network is initialised from a pre-trained plain network (WLD, Sec. 3.3)
  and then either increases it by hand or trains it ("treat α as a parameter trained
  with other parameters"); good values lie in [0.01, 0.04]. Eq. 6 (training from
  scratch, Table 1) is α = 1, the default here. ``learn_alpha=True`` makes α a
  trainable ``nn.Parameter``, otherwise it is a buffer; the state-dict key is
  ``alpha`` either way.

Parameters: k²·C_in·C_out (W) + C_in·C_out (W') + C_out (b1) [+ C_out (b2)]
[+ 1 (α if learnable)]. Replacing the 3×3 layers of ResNet-18/34/50 gives
12,917,800 / 24,155,688 / 26,822,056 = 12.9 M / 24.2 M / 26.8 M (IC Table 1) with
``bias=True``; without b2, IC-ResNet-34 would be 24,148,136 = 24.1 M, so the paper's
count includes both biases.

Deploy form (``switch_to_deploy``): the IC layer cannot become one convolution (the
ReLU is inside), and its form is already minimal: merging W' into the window sum
would give a dense k×k kernel with k² times the MACs of the 1×1 W' (the paper's
cost argument in Sec. 3.4 relies on the split). The only exact simplification is
the bias arrangement: with y = W⊗X + b2 and z = W'·(1⊗̂X) + (b2 − b1),

    u = y + α · ReLU(y − z),

so both biases live inside the two convolutions and the two broadcast additions of
the training form disappear. α stays a separate multiply: pulling it inside the
ReLU (valid only for α ≥ 0) would need a second, scaled copy of y.

Deploy rewrite (``absorb_batchnorm``, ``rewritten``; ``deploy.layers.rewrite_blocks``), exact in
real arithmetic, for the BN the host block applies after the layer (y -> s·y + t per
channel) too. With Y' = s·y + t, Z' = s·z + t and B = Y' − Z' = s·(y − z):

* s ≥ 0: s·ReLU(v) = ReLU(s·v), so s·u + t = Y' + α·ReLU(B) -- the BN moves into both
  convolutions (s = 0 included: the channel is t);
* s < 0: s·ReLU(v) = s·v − ReLU(s·v), so s·u + t = Y' + α·B − α·ReLU(B): per channel the
  ReLU branch changes sign and a linear term appears; only layers with a negative
  scale get that extra term;
* the window sum 1 ⊗̂ X is k_h·k_w times a k×k average pooling that counts the zero
  padding (``count_include_pad``); the factor goes into W'. ONNX Runtime pools faster
  than it runs an all-ones depthwise convolution. (Dilated windows keep the convolution:
  average pooling has no dilation here.)
* the graph is y = conv(x), B = adjust(pool(x)) + y with the negated adjustment kernel
  (one convolution accumulating into y), and α·ReLU(B) + y as a depthwise 1×1
  convolution of ReLU(B) accumulating into y, which ONNX Runtime fuses with the ReLU
  that follows the block's BN. With α = 0 the layer is its convolution.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from deploy.layers.paper import ClaimCheck, ClaimFacts, target
from deploy.layers.registry import ConvKind, ConvSpec, options_from_signature, register_conv_kind
from deploy.layers.rewrite_blocks import ChannelScale, DeployRewrite, absorbed_scale_shift, deploy_copy, identity_affine

_IntOr2 = int | tuple[int, int]


class ICConv2d(nn.Module):
    """IC layer of Eq. 6/7: a drop-in replacement for a k×k ``nn.Conv2d`` (groups = 1)."""

    b1: nn.Parameter | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOr2,
        stride: _IntOr2 = 1,
        padding: _IntOr2 | str = 0,
        dilation: _IntOr2 = 1,
        bias: bool = True,
        alpha: float = 1.0,
        learn_alpha: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"ICConv2d needs positive channel counts, got in={in_channels}, out={out_channels}"
            )
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=False)
        # 1 ⊗̂ X: depthwise window sum with a frozen all-ones kernel (Eq. 6), the same geometry as W
        self.window_sum = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride, padding=padding,
                                    dilation=dilation, groups=in_channels, bias=False)
        self.window_sum.weight.requires_grad_(False)
        with torch.no_grad():
            self.window_sum.weight.fill_(1.0)
        # W': C_out x C_in adjustment weights applied to the window sums (1x1 conv).
        self.adjust = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.b1 = nn.Parameter(torch.zeros(out_channels))
        if bias:
            fan_in = in_channels * self.conv.kernel_size[0] * self.conv.kernel_size[1]
            bound = 1.0 / math.sqrt(fan_in)
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        alpha_t = torch.tensor(float(alpha))
        if learn_alpha:
            self.alpha = nn.Parameter(alpha_t)
        else:
            self.register_buffer("alpha", alpha_t)
        self.has_bias = bias
        self.learn_alpha = learn_alpha
        self.deployed = False

    # nn.Conv2d-like read-only attributes, so code written for Conv2d keeps working.
    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.conv.kernel_size

    @property
    def stride(self) -> tuple[int, ...]:
        return self.conv.stride

    @property
    def padding(self) -> tuple[int, ...] | str:
        return self.conv.padding

    @property
    def dilation(self) -> tuple[int, ...]:
        return self.conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.adjust(self.window_sum(x))
        y = self.conv(x)
        if self.deployed:
            # biases already inside conv (b2) and adjust (b2 - b1)
            return y + self.alpha * F.relu(y - z)
        assert self.b1 is not None  # present until switch_to_deploy moves it into adjust
        inner = y - z + self.b1.view(1, -1, 1, 1)
        out = y + self.alpha * F.relu(inner)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Move b2 into ``conv`` and (b2 − b1) into ``adjust``; exact, in place, idempotent."""
        if self.deployed or self.b1 is None:
            return
        b1 = self.b1.detach()
        b2 = self.bias.detach() if self.bias is not None else torch.zeros_like(b1)
        if self.bias is not None:
            self.conv.bias = nn.Parameter(b2.clone())
        self.adjust.bias = nn.Parameter(b2 - b1)
        self.b1 = None
        self.bias = None
        self.deployed = True

    def extra_repr(self) -> str:
        alpha = "meta" if self.alpha.is_meta else f"{self.alpha.item():g}"
        return f"alpha={alpha}, learn_alpha={self.learn_alpha}, bias={self.has_bias}, deployed={self.deployed}"

    @torch.no_grad()
    def absorb_batchnorm(self, bn: _BatchNorm) -> nn.Module:
        """The deploy rewrite equal to ``bn(self(x))`` (eval mode): the BN inside both convolutions."""
        scale, shift = absorbed_scale_shift(bn, self.out_channels, "the IC layer")
        return _rewrite(deploy_copy(self), scale, shift)

    @torch.no_grad()
    def rewritten(self) -> nn.Module:
        """The deploy rewrite equal to ``self`` (the identity affine map absorbed)."""
        return _rewrite(deploy_copy(self), *identity_affine(self.out_channels, self.conv.weight))


def _rewrite(ic: ICConv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """``scale * ic(x) + shift`` per channel: ``ICConvBN``, or the convolution alone when α = 0."""
    conv = copy.deepcopy(ic.conv)
    b2 = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(scale * b2 + shift)
    if float(ic.alpha) == 0.0:
        return conv
    return ICConvBN(ic, conv, scale, shift)


def _window_pool(ic: ICConv2d) -> nn.AvgPool2d | None:
    """1 ⊗̂ X / (k_h·k_w) as an average pooling counting the padding, where one exists."""
    ws = ic.window_sum
    pads = ws.padding
    if isinstance(pads, str) or tuple(ws.dilation) != (1, 1) or ws.padding_mode != "zeros":
        return None
    if any(2 * p > k for p, k in zip(pads, ws.kernel_size)):
        return None
    return nn.AvgPool2d(tuple(ws.kernel_size), stride=tuple(ws.stride), padding=tuple(pads),  # type: ignore[arg-type]
                        count_include_pad=True)


class ICConvBN(DeployRewrite):
    """The IC layer followed by y -> s·y + t per channel, rewritten (module docstring):
    ``conv`` gives Y', ``adjust`` the negated Z' from the pooled window, ``gate`` α·sign(s)
    and, where some s < 0, ``linear`` the α·B term of those channels."""

    linear: ChannelScale | None

    @torch.no_grad()
    def __init__(self, ic: ICConv2d, conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        assert ic.deployed and ic.adjust.bias is not None, "ICConvBN is built from the IC layer's deploy form"
        adjust_bias = ic.adjust.bias
        self.conv = conv
        pool = _window_pool(ic)
        self.window: nn.Module = pool if pool is not None else copy.deepcopy(ic.window_sum)
        area = float(ic.window_sum.kernel_size[0] * ic.window_sum.kernel_size[1]) if pool is not None else 1.0
        self.adjust = copy.deepcopy(ic.adjust)
        self.adjust.weight.mul_(-area * scale.reshape(-1, 1, 1, 1))
        self.adjust.bias = nn.Parameter(-(scale * adjust_bias + shift))
        alpha = ic.alpha.detach().to(scale.dtype)
        negative = scale < 0
        self.gate = ChannelScale(alpha * torch.where(negative, -1.0, 1.0).to(scale.dtype))
        self.linear = ChannelScale(alpha * negative.to(scale.dtype)) if bool(negative.any()) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        inner = self.adjust(self.window(x)) + y  # B = Y' - Z'
        outer = y if self.linear is None else self.linear(inner) + y
        return self.gate(F.relu(inner)) + outer


def _build(role: str, spec: ConvSpec, options: Mapping[str, Any]) -> ICConv2d:
    return ICConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, stride=spec.stride,
                    padding=spec.padding, **options)


register_conv_kind(ConvKind(
    name="ic", title="IC", module=ICConv2d, build=_build,
    # Sec. 3.3 / 4.1: "replacing the whole 3x3 convolutional layers in blocks".
    roles=frozenset({"block3x3"}),
    options=options_from_signature(ICConv2d, ("alpha", "learn_alpha", "bias"), help={
        "alpha": "scale of the ReLU branch (Eq. 7)",
        "learn_alpha": "train alpha with the other parameters",
        "bias": "the outer bias b2 of Eq. 3",
    }, bounds={"alpha": (-1000.0, 1000.0)}, weights={"alpha": "alpha"}),
    targets=(
        target("resnet18", "12.9 M", "2.01 G", "IC Table 1"),
        target("resnet34", "24.2 M", "4.07 G", "IC Table 1"),
        target("resnet50", "26.8 M", "4.33 G", "IC Table 1"),
    ),
    # Sec. 4.1 / Table 1: ResNet-50 4.12 G -> IC-ResNet50 4.33 G, "+5.1 % FLOPs"
    claim=ClaimFacts(ClaimCheck.MACS_OVERHEAD, subject="IC-ResNet50", title="IC adds about +5.1 % MACs",
                     source="IC Sec. 4.1 / Table 1", figures={"baseline_macs": "4.12 G", "overhead": 0.051}),
    paper="IC Networks: Remodeling the Basic Unit for Convolutional Neural Networks",
))
