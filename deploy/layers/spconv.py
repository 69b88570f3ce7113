"""SPConv 3×3: split the input into representative and redundant channels (SPConv, Sec. 3.2-3.4).

Mirrors ``SPConv_3x3`` of the reference ``code/resnet_sp.py`` (qiulinzhang/SPConv.pytorch):
module names ``gwc``, ``pwc``, ``conv1x1``, ``bn1``, ``bn2`` and the pooling modules,
so ``resnet_sp`` checkpoints load strictly. Written from the paper and the reference's
structure; no code copied.

With L input channels, ratio α and M output channels (Eq. 2, 3, 6, 7):

* representative part, the first ``int(L·α)`` channels (Sec. 3.2-3.3):
  U3 = bn1(gwc(x_rep) + pwc(x_rep)); gwc is a 3×3 group convolution with G = 2 groups
  producing all M channels, pwc a 1×1 convolution over all representative channels
  (both bias-free), summed because they share their input (Eq. 3);
* redundant part, the remaining channels: U1 = bn2(conv1x1(x_red)), a 1×1 convolution
  WITH bias, as the reference has it;
* parameter-free fusion (Sec. 3.4): S3 = GAP(U3), S1 = GAP(U1) (Eq. 4),
  [β, γ] = softmax over the two branches per channel (Eq. 5), Y = β·U3 + γ·U1 (Eq. 6).

Stride 2 as the reference: gwc carries the stride itself, while pwc and conv1x1 read
a 2×2/stride-2 average-pooled copy of their input ("use avgpool first to reduce
information lost"). gwc's output has ⌈H/2⌉ rows and the pooled paths ⌊H/2⌋, so odd
spatial sizes cannot work with stride 2; they are rejected with a clear error.
(An early version of the reference pooled an undefined ``x_1x1_se`` here; the
current one pools ``x_1x1``, which is what this module does.)

Parameters (Eq. 9 plus the biases and BNs the reference has):
9·(αL/2)·M + αL·M + (1−α)L·M + M (conv1x1 bias) + 4M (bn1, bn2). In ResNet-50 only
``Bottleneck.conv2`` is replaced (α = 1/2: 18.35 M counted exactly; the paper prints
18.34 M; α = 1/4: 16.93 M; α = 1/8: 16.22 M).

Deploy form (``switch_to_deploy``): the data-dependent softmax fusion keeps SPConv from
becoming one convolution, but its linear pieces fold exactly. bn1 follows the *sum*
gwc + pwc, so bn1(gwc(x) + pwc(x)) = s·gwc(x) + s·pwc(x) + shift: both kernels are
scaled by s and the shift goes into gwc's bias. gwc and pwc stay separate: merging pwc
into a dense 3×3 kernel (or into gwc, which is grouped) would multiply its MACs. bn2
folds into conv1x1.

Deploy rewrite (``absorb_batchnorm``, ``rewritten``; ``deploy.layers.rewrite_blocks``): exact in
real arithmetic, for the BN the host block applies after SPConv (``Bottleneck.bn2``,
per channel y -> s·y + t) too:

* β + γ = 1 (a softmax over two logits), so s·(β·U3 + γ·U1) + t = β·U3' + γ·U1' with
  U3' = s·U3 + t and U1' = s·U1 + t: the BN goes into both branches' kernels;
* a softmax over two values is a sigmoid of their difference, and GAP is linear:
  β = σ(GAP(U3) − GAP(U1)) = σ(GAP(D) / s) with D = U3' − U1' = s·(U3 − U1) (t cancels);
  a negative s is just a negative divisor; where s = 0 the output channel is t whatever
  the gate is (D = 0 there), so its divisor is replaced by 0 rather than 1/0;
* Y' = U1' + β·D. The graph computes N = −U1' (conv1x1 with the negated kernel),
  D = gwc'(x) + pwc'(x) + N as convolutions accumulating into one another, the GAP as an
  average pooling over the whole map, the 1/s and the −1 as depthwise 1×1 convolutions
  and β over the map as a nearest upsampling, so that ONNX Runtime keeps every op in
  its blocked layout (no Sub, ReduceMean, Softmax, Gather, Slice or broadcasting Mul);
* the input slices are ``input_split``: where the host computes them with a 1×1 conv
  (+ ReLU) used by nothing else, that conv is split instead (``deploy.fold.rewrite``).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from deploy.core.errors import BadInputError
from deploy.layers.conv_bn import bn_scale_shift, eager, fuse_conv_bn
from deploy.layers.paper import THOP_NOTE, ClaimCheck, ClaimFacts, target
from deploy.layers.registry import ConvKind, ConvSpec, ZooVariant, options_from_signature, register_conv_kind
from deploy.layers.rewrite_blocks import (
    ChannelScale,
    DeployRewrite,
    absorbed_scale_shift,
    broadcast_to_map,
    deploy_copy,
    global_mean,
    identity_affine,
)


def _validate(in_channels: int, out_channels: int, stride: int, ratio: float) -> tuple[int, int]:
    """Channel split of the reference (``int(in·ratio)``) or a ValueError saying why not."""
    if stride not in (1, 2):
        raise ValueError(f"SPConv3x3 supports stride 1 or 2 (as the reference), got stride={stride}")
    rep = int(in_channels * ratio)
    red = in_channels - rep
    what = f"SPConv3x3(in_channels={in_channels}, ratio={ratio})"
    if rep <= 0:
        raise ValueError(
            f"{what} gives the representative (3x3) part int({in_channels}*{ratio}) = {rep} channels; "
            "raise ratio or in_channels"
        )
    if red <= 0:
        raise ValueError(
            f"{what} gives the redundant (1x1) part {red} channels; use a ratio below 1"
        )
    if rep % 2:
        raise ValueError(
            f"{what} gives an odd representative width {rep}, but gwc is a group convolution "
            "with 2 groups; choose ratio/in_channels so that int(in_channels*ratio) is even"
        )
    if out_channels % 2:
        raise ValueError(
            f"SPConv3x3 out_channels={out_channels} must be even: gwc (groups=2) splits its "
            "output channels into 2 groups"
        )
    return rep, red


class SPConv3x3(nn.Module):
    """Drop-in for a 3×3, padding-1 convolution (Sec. 3.2-3.4, Eq. 3-7)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, ratio: float = 0.5) -> None:
        super().__init__()
        rep, red = _validate(in_channels, out_channels, stride, ratio)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.inplanes_3x3 = rep
        self.inplanes_1x1 = red
        self.outplanes = out_channels
        self.stride = stride
        self.ratio = ratio
        self.gwc = nn.Conv2d(rep, out_channels, kernel_size=3, stride=stride, padding=1, groups=2, bias=False)
        self.pwc = nn.Conv2d(rep, out_channels, kernel_size=1, bias=False)
        self.conv1x1 = nn.Conv2d(red, out_channels, kernel_size=1)
        self.avgpool_s2_1 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.avgpool_s2_3 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.avgpool_add_1 = nn.AdaptiveAvgPool2d(1)
        self.avgpool_add_3 = nn.AdaptiveAvgPool2d(1)
        self.bn1: nn.Module = nn.BatchNorm2d(out_channels)  # nn.Identity once folded
        self.bn2: nn.Module = nn.BatchNorm2d(out_channels)
        self.deployed = False

    @property
    def input_split(self) -> tuple[int, int]:
        """The channel slices the input is cut into: representative, redundant (Sec. 3.2)."""
        return (self.inplanes_3x3, self.inplanes_1x1)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x_rep, x_red = _split_input(x, self.inplanes_3x3, self.stride)
        out_gwc = self.gwc(x_rep)
        if self.stride == 2:
            x_rep = self.avgpool_s2_3(x_rep)
            x_red = self.avgpool_s2_1(x_red)
        u3 = self.bn1(out_gwc + self.pwc(x_rep))
        u1 = self.bn2(self.conv1x1(x_red))
        s3 = self.avgpool_add_3(u3).flatten(1)
        s1 = self.avgpool_add_1(u1).flatten(1)
        weights = torch.softmax(torch.stack((s3, s1), dim=2), dim=2)  # (N, C, 2): [β, γ]
        beta = weights[:, :, 0, None, None]
        gamma = weights[:, :, 1, None, None]
        return u1 * gamma + u3 * beta

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold bn1 into gwc and pwc and bn2 into conv1x1; exact, in place, idempotent."""
        if self.deployed:
            return
        assert isinstance(self.bn1, nn.BatchNorm2d) and isinstance(self.bn2, nn.BatchNorm2d)
        scale, _ = bn_scale_shift(self.bn1)
        pwc = nn.Conv2d(self.inplanes_3x3, self.outplanes, kernel_size=1, bias=False,
                        device=self.pwc.weight.device, dtype=self.pwc.weight.dtype)
        pwc.weight.copy_(self.pwc.weight * scale.reshape(-1, 1, 1, 1))
        self.gwc = fuse_conv_bn(self.gwc, self.bn1)  # s·W_gwc, bias = shift
        self.pwc = pwc
        self.conv1x1 = fuse_conv_bn(self.conv1x1, self.bn2)
        self.bn1 = nn.Identity()
        self.bn2 = nn.Identity()
        self.deployed = True

    @torch.no_grad()
    def absorb_batchnorm(self, bn: _BatchNorm) -> SPConvBN:
        """The deploy rewrite equal to ``bn(self(x))`` (eval mode): the BN inside both branches."""
        scale, shift = absorbed_scale_shift(bn, self.outplanes, "SPConv")
        return SPConvBN(deploy_copy(self), scale, shift)

    @torch.no_grad()
    def rewritten(self) -> SPConvBN:
        """The deploy rewrite equal to ``self`` (the identity affine map absorbed)."""
        return SPConvBN(deploy_copy(self), *identity_affine(self.outplanes, self.gwc.weight))


def _split_input(x: torch.Tensor | tuple[torch.Tensor, torch.Tensor], rep: int,
                 stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(representative, redundant) channels: sliced from ``x``, or given as a pair by a split producer."""
    x_rep, x_red = x if isinstance(x, tuple) else (x[:, :rep], x[:, rep:])
    if stride == 2 and eager(x_rep) and (x_rep.shape[-2] % 2 or x_rep.shape[-1] % 2):
        raise ValueError(
            f"SPConv3x3 with stride 2 got a {x_rep.shape[-2]}x{x_rep.shape[-1]} input: its 2x2 average "
            "pooling and its strided 3x3 disagree on odd sizes; use an even height and width"
        )
    return x_rep, x_red


class SPConvBN(DeployRewrite):
    """SPConv followed by the per-channel affine map y -> s·y + t, rewritten (module docstring).

    ``gwc``/``pwc`` compute U3' = s·U3 + t, ``neg_red`` computes N = −U1' = −(s·U1 + t),
    ``inv_scale`` multiplies the pooled D by 1/s (0 where s = 0) and ``negate`` by −1.
    """

    @torch.no_grad()
    def __init__(self, sp: SPConv3x3, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        assert sp.deployed, "SPConvBN is built from SPConv's deploy form"
        self.stride = sp.stride
        self.inplanes_3x3, self.inplanes_1x1 = sp.inplanes_3x3, sp.inplanes_1x1
        col = scale.reshape(-1, 1, 1, 1)
        self.gwc = copy.deepcopy(sp.gwc)  # bn1's shift is its bias
        self.gwc.weight.mul_(col)
        assert self.gwc.bias is not None
        self.gwc.bias.copy_(scale * self.gwc.bias + shift)
        self.pwc = copy.deepcopy(sp.pwc)
        self.pwc.weight.mul_(col)
        self.neg_red = copy.deepcopy(sp.conv1x1)
        self.neg_red.weight.mul_(-col)
        assert self.neg_red.bias is not None
        self.neg_red.bias.copy_(-(scale * self.neg_red.bias + shift))
        self.avgpool_s2 = nn.AvgPool2d(kernel_size=2, stride=2)
        inverse = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / torch.where(scale == 0, 1.0, scale))
        self.inv_scale = ChannelScale(inverse)
        self.negate = ChannelScale(-torch.ones_like(scale))

    @property
    def input_split(self) -> tuple[int, int]:
        return (self.inplanes_3x3, self.inplanes_1x1)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x_rep, x_red = _split_input(x, self.inplanes_3x3, self.stride)
        p_rep = self.avgpool_s2(x_rep) if self.stride == 2 else x_rep
        p_red = self.avgpool_s2(x_red) if self.stride == 2 else x_red
        neg_u1 = self.neg_red(p_red)
        diff = self.gwc(x_rep) + (self.pwc(p_rep) + neg_u1)  # D = U3' - U1'
        beta = torch.sigmoid(self.inv_scale(global_mean(diff)))
        return self.negate(neg_u1) + broadcast_to_map(beta, diff) * diff


def _build(role: str, spec: ConvSpec, options: Mapping[str, Any]) -> SPConv3x3:
    if spec.kernel_size != 3 or spec.padding != 1:  # a drop-in for 3x3, padding-1 convolutions only
        raise ValueError(f"SPConv replaces 3x3 convolutions with padding 1, not k={spec.kernel_size} p={spec.padding}")
    return SPConv3x3(spec.in_channels, spec.out_channels, stride=spec.stride, **options)


def _recognise(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """A reference ``resnet_sp`` network: its SPConv layers hold ``gwc``; alpha from their widths."""
    gwc = sorted(k for k in state if k.endswith(".gwc.weight"))
    return {"ratio": _ratio_from_weights(state, gwc[0][: -len(".gwc.weight")])} if gwc else None


def _ratio_from_weights(state: Mapping[str, Any], layer: str) -> float:
    """alpha from one SPConv3x3's weights: pwc reads the int(in * alpha) representative channels,
    conv1x1 the rest (Sec. 3.2); else, in the reference ResNet-50, the block's conv1 output
    width is the SPConv's input width."""
    rep_in = state[f"{layer}.pwc.weight"].shape[1]
    rest = state.get(f"{layer}.conv1x1.weight")
    if rest is not None:
        return rep_in / (rep_in + rest.shape[1])
    block_conv1 = state.get(f"{layer.rsplit('.', 1)[0]}.conv1.weight")
    if block_conv1 is None:
        raise BadInputError(f"SPConv checkpoint without {layer}.conv1x1.weight: its ratio cannot be read; "
                            "give `arch`, `conv` and the `conv_kwargs` ratio")
    return rep_in / block_conv1.shape[0]


register_conv_kind(ConvKind(
    name="sp", title="SPConv", module=SPConv3x3, build=_build,
    # Sec. 4 / 4.1-4.2: only the 3x3 convs; in a Bottleneck that is conv2 alone, in ResNet-20
    # every 3x3 "except the initial one".
    roles=frozenset({"block3x3"}),
    options=options_from_signature(SPConv3x3, ("ratio",), help={"ratio": "split ratio alpha (Sec. 3.2)"},
                                   recorded=("ratio",), bounds={"ratio": (1 / 512, 1.0)}),
    variants=tuple(ZooVariant((("ratio", r),), f"α=1/{int(1 / r)}", f"1/{int(1 / r)}") for r in (0.5, 0.25, 0.125)),
    recognise=_recognise, reference="spconv",
    targets=(
        target("resnet50", "18.34 M", "2.97 G", "SPConv Table 2", ratio=0.5, convention="thop", note=THOP_NOTE),
        target("resnet50", "16.93 M", "2.74 G", "SPConv Table 2", ratio=0.25, convention="thop", note=THOP_NOTE),
        target("resnet50", "16.22 M", "2.62 G", "SPConv Table 2", ratio=0.125, convention="thop", note=THOP_NOTE),
        target("resnet20", "0.10 M", "17.91 M", "SPConv Table 1", ratio=0.5, convention="thop", note=THOP_NOTE),
        target("resnet20", "0.071 M", "12.89 M", "SPConv Table 1", ratio=0.25, convention="thop", note=THOP_NOTE),
    ),
    # Table 2: ResNet-50 25.56 M, 4.14 G; latency per image on a V100 at batch 64 (DALI)
    claim=ClaimFacts(ClaimCheck.FASTER, subject="SPConv-ResNet50", title="SPConv is faster than ResNet-50",
                     source="SPConv Table 2", figures={
                         "baseline_params": "25.56 M", "baseline_macs": "4.14 G",
                         "gpu_ms": {"baseline": 1.32, "1/2": 1.23, "1/4": 1.19, "1/8": 1.17},
                         "gpu_note": "V100, batch 64"}),
    paper="Split to Be Slim: An Overlooked Redundancy in Vanilla Convolution (IJCAI 2020)",
))
