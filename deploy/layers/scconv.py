"""Self-calibrated convolution and the SCNet bottleneck (SCNet, Sec. 3.1-3.2, Fig. 2).

Mirrors the reference ``scnet.py`` of MCG-NKU/SCNet (current version: ``SCConv(inplanes,
planes, stride, padding, dilation, groups, pooling_r, norm_layer)``, no ReLU inside
SCConv or k1, the block applies ReLU after both branches), so the official scnet50 /
scnet101 checkpoints load with strict key matching. Written from the paper and the
reference's structure; no code copied.

Self-calibration (Sec. 3.1.2):

    T1  = AvgPool_r(X1)                                     (Eq. 2)   k2[0]
    X1' = Up(F2(T1))                                         (Eq. 3)   k2[1:], Up
    Y1' = F3(X1) · sigmoid(X1 + X1')                         (Eq. 4)   k3
    Y1  = F4(Y1')                                            (Eq. 5)   k4

where F2, F3, F4 are bias-free 3×3 convolutions each followed by BatchNorm (k4 carries
the stride). ``Up`` is where paper and code differ: the paper says bilinear, the
reference calls ``F.interpolate(..., size)`` with the default mode, nearest.
``interpolation='nearest'`` (default) reproduces the reference and its checkpoints;
``'bilinear'`` follows the paper with ``align_corners=False``: r×r average pooling
with stride r puts pooled cell i at input coordinate r·i + (r−1)/2, which is exactly
the half-pixel mapping that ``align_corners=False`` inverts (when H, W are multiples
of r), whereas ``align_corners=True`` would stretch the pooled grid to the image
corners and shift every reference by up to (r−1)/2 pixels. It is also ONNX Resize's
``half_pixel`` mode, which TensorRT supports natively.

Deploy form: the sigmoid gate keeps SCConv from collapsing into one convolution, but
every Conv+BN pair folds exactly (``deploy.layers.conv_bn``); each BN becomes
``nn.Identity`` at the same ``nn.Sequential`` index, so the remaining keys
(``k4.0.weight``, ``k4.0.bias``, ...) still line up with the reference's.

Deploy rewrite (``SCConv.rewritten``; ``deploy.layers.rewrite_blocks``), exact in real arithmetic:
Up() of a map whose size H, W is fixed when the graph is traced. For a pooled size p with
H % p == 0 (W likewise), nearest is an upsampling by the integer factor H/p (the same
source pixel floor(i·p/H) = floor(i/(H/p))), exported as Resize with constant scales,
which ONNX Runtime runs in its blocked layout; p = 1 is a plain broadcast; any other size
is a gather of the source rows and columns torch's nearest picks (only where torch's own
float32 arithmetic picks floor(i·p/H), see ``nearest_rows``). The graph has no Shape/Concat
size computation left. (``bilinear`` keeps the sized interpolation.)

Not rewritten, because it is slower: conv3(cat(a, b)) = conv3_a(a) + conv3_b(b) removes
the Concat, but each half then writes (and the second re-reads) conv3's whole output, four
times as wide as the concatenated input: measured on ONNX Runtime CPU (SCNet-50, 224x224,
batch 4 and 1, one thread), 3-5 % slower than the Concat and one conv3.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from deploy.layers.conv_bn import eager, fuse_conv_bn
from deploy.layers.paper import ClaimCheck, ClaimFacts, target
from deploy.layers.registry import BlockSpec, ConvKind, ZooModel, options_from_signature, register_conv_kind
from deploy.layers.rewrite_blocks import DeployRewrite

_INTERPOLATIONS = ("nearest", "bilinear")


def fuse_sequential_conv_bn(seq: nn.Sequential) -> None:
    """Fold every ``Conv2d`` immediately followed by a BatchNorm inside ``seq`` (in place).

    The BN is replaced by ``nn.Identity`` so indices (and state-dict keys) are kept.
    Non-BN norm layers (GroupNorm, ...) are left alone: they cannot be folded exactly.
    """
    for i in range(len(seq) - 1):
        conv, bn = seq[i], seq[i + 1]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm):
            seq[i] = fuse_conv_bn(conv, bn)
            seq[i + 1] = nn.Identity()



def _fuse_pair(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
    if isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm):
        setattr(owner, conv_name, fuse_conv_bn(conv, bn))
        setattr(owner, bn_name, nn.Identity())


class SCConv(nn.Module):
    """Self-calibration branch (Eq. 2-5): ``k4(k3(x) * sigmoid(x + Up(k2(x))))``.

    ``inplanes`` must equal ``planes``: the gate adds the input to k2's output.
    """

    initialised_by_network = True  # the reference SCNet initialises the convs and BNs inside its blocks

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        pooling_r: int = 4,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        interpolation: str = "nearest",
    ) -> None:
        super().__init__()
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"SCConv interpolation={interpolation!r} is not supported; use 'nearest' "
                "(reference code) or 'bilinear' (paper text)"
            )
        if inplanes != planes:
            raise ValueError(
                f"SCConv needs inplanes == planes (got {inplanes} != {planes}): "
                "the gate adds the input x to k2(x)"
            )
        if pooling_r < 1:
            raise ValueError(f"SCConv pooling_r must be >= 1, got {pooling_r}")
        norm_layer = norm_layer or nn.BatchNorm2d

        def conv3x3(s: int) -> nn.Conv2d:
            return nn.Conv2d(inplanes, planes, kernel_size=3, stride=s, padding=padding,
                             dilation=dilation, groups=groups, bias=False)

        self.k2 = nn.Sequential(nn.AvgPool2d(kernel_size=pooling_r, stride=pooling_r),
                                conv3x3(1), norm_layer(planes))
        self.k3 = nn.Sequential(conv3x3(1), norm_layer(planes))
        self.k4 = nn.Sequential(conv3x3(stride), norm_layer(planes))
        self.pooling_r = pooling_r
        self.interpolation = interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if eager(x) and (h < self.pooling_r or w < self.pooling_r):
            raise ValueError(
                f"SCConv input is {h}x{w}, smaller than pooling_r={self.pooling_r}: the r x r "
                "average pooling would be empty; use a larger input or a smaller pooling_r"
            )
        ref = self.k2(x)
        if self.interpolation == "bilinear":
            up = F.interpolate(ref, size=(h, w), mode="bilinear", align_corners=False)
        else:
            up = F.interpolate(ref, size=(h, w), mode="nearest")
        gate = torch.sigmoid(x + up)
        return self.k4(self.k3(x) * gate)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold the BN of k2, k3 and k4 into their convs (exact, in place, idempotent)."""
        for seq in (self.k2, self.k3, self.k4):
            fuse_sequential_conv_bn(seq)

    @torch.no_grad()
    def rewritten(self) -> SCConvStatic:
        """The deploy rewrite equal to ``self``: folded, with Up() computed from static sizes."""
        folded = copy.deepcopy(self)
        folded.switch_to_deploy()
        return SCConvStatic(folded)


def nearest_rows(size_in: int, size_out: int) -> list[int] | None:
    """The source row of each output row of a nearest interpolation from ``size_in`` to
    ``size_out`` rows: the exact floor(i·in/out), where torch's own float32 arithmetic (ATen's
    nearest_idx: min(floor(i·(in/out)), in − 1) with a float32 ratio) picks the same rows, else
    None. (They differ for a few sizes when in/out is not a power of two, e.g. 24 -> 74.)"""
    exact = [i * size_in // size_out for i in range(size_out)]
    if size_out in (size_in, 2 * size_in):
        return exact
    ratio = np.float32(size_in) / np.float32(size_out)
    rounded = [min(int(np.floor(np.float32(i) * ratio)), size_in - 1) for i in range(size_out)]
    return exact if rounded == exact else None


def upsample_static(ref: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Nearest interpolation of ``ref`` to (h, w), equal to ``F.interpolate(ref, size=(h, w))``,
    in the op that exports best for the sizes (module docstring)."""
    p, q = int(ref.shape[-2]), int(ref.shape[-1])
    if p == 1 and q == 1:
        return ref  # the caller's addition broadcasts it
    if h % p == 0 and w % q == 0:
        return F.interpolate(ref, scale_factor=(float(h // p), float(w // q)), mode="nearest")
    rows, cols = nearest_rows(p, h), nearest_rows(q, w)
    if rows is None or cols is None:
        return F.interpolate(ref, size=(h, w), mode="nearest")
    rows_t = torch.tensor(rows, dtype=torch.long, device=ref.device)
    return ref.index_select(2, rows_t).index_select(3, torch.tensor(cols, dtype=torch.long, device=ref.device))


class SCConvStatic(DeployRewrite):
    """SCConv's deploy form with Up() from static sizes (module docstring); keys as SCConv's."""

    def __init__(self, folded: SCConv) -> None:
        super().__init__()
        self.k2, self.k3, self.k4 = folded.k2, folded.k3, folded.k4
        self.pooling_r = folded.pooling_r
        self.interpolation = folded.interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        ref = self.k2(x)
        if self.interpolation == "bilinear":
            up = F.interpolate(ref, size=(h, w), mode="bilinear", align_corners=False)
        else:
            up = upsample_static(ref, h, w)
        return self.k4(self.k3(x) * torch.sigmoid(x + up))


class SCBottleneck(nn.Module):
    """SCNet bottleneck (Sec. 3.2, Fig. 2), expansion 4, key names as the reference.

    Two half-width branches from the block input: conv1_a/bn1_a/ReLU → k1 (plain 3×3 +
    BN) and conv1_b/bn1_b/ReLU → scconv, each followed by ReLU, concatenated, then
    conv3/bn3, the residual (``downsample`` if given) and a final ReLU.
    ``group_width = int(planes · bottleneck_width / 64) · cardinality`` (planes/2 with
    the reference default bottleneck_width = 32). ``avd`` (SCNet-v1d) replaces the
    stride of k1/scconv by a 3×3 average pooling after the branches.
    """

    expansion = 4
    initialised_by_network = True  # the reference SCNet initialises the convs and BNs inside its blocks
    pooling_r = 4  # down-sampling rate r of the self-calibration (paper: r = 4)

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 1,
        bottleneck_width: int = 32,
        avd: bool = False,
        dilation: int = 1,
        is_first: bool = False,
        norm_layer: type[nn.Module] | None = None,
        interpolation: str = "nearest",
        pooling_r: int | None = None,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if pooling_r is not None:
            self.pooling_r = pooling_r
        group_width = int(planes * (bottleneck_width / 64.0)) * cardinality
        if group_width < 1:
            raise ValueError(
                f"SCBottleneck(planes={planes}, bottleneck_width={bottleneck_width}) has a "
                "zero-width branch; raise planes or bottleneck_width"
            )
        self.conv1_a = nn.Conv2d(inplanes, group_width, kernel_size=1, bias=False)
        self.bn1_a = norm_layer(group_width)
        self.conv1_b = nn.Conv2d(inplanes, group_width, kernel_size=1, bias=False)
        self.bn1_b = norm_layer(group_width)
        self.avd = avd and (stride > 1 or is_first)
        if self.avd:
            self.avd_layer = nn.AvgPool2d(3, stride, padding=1)
            stride = 1
        self.k1 = nn.Sequential(
            nn.Conv2d(group_width, group_width, kernel_size=3, stride=stride, padding=dilation,
                      dilation=dilation, groups=cardinality, bias=False),
            norm_layer(group_width),
        )
        self.scconv = SCConv(group_width, group_width, stride=stride, padding=dilation,
                             dilation=dilation, groups=cardinality, pooling_r=self.pooling_r,
                             norm_layer=norm_layer, interpolation=interpolation)
        self.conv3 = nn.Conv2d(group_width * 2, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.dilation = dilation
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out_a = self.relu(self.bn1_a(self.conv1_a(x)))
        out_b = self.relu(self.bn1_b(self.conv1_b(x)))
        out_a = self.relu(self.k1(out_a))
        out_b = self.relu(self.scconv(out_b))
        if self.avd:
            out_a = self.avd_layer(out_a)
            out_b = self.avd_layer(out_b)
        out = self.bn3(self.conv3(torch.cat([out_a, out_b], dim=1)))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        return self.relu(out)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold every Conv+BN pair of the block exactly; BNs become ``nn.Identity``.

        conv1_a/bn1_a, conv1_b/bn1_b, k1, scconv (k2, k3, k4), conv3/bn3 and a
        ``nn.Sequential`` downsample. conv1_a and conv1_b read the same input and could
        be merged into one 1×1 conv too, but that would change the reference's keys.
        """
        _fuse_pair(self, "conv1_a", "bn1_a")
        _fuse_pair(self, "conv1_b", "bn1_b")
        fuse_sequential_conv_bn(self.k1)
        self.scconv.switch_to_deploy()
        _fuse_pair(self, "conv3", "bn3")
        if isinstance(self.downsample, nn.Sequential):
            fuse_sequential_conv_bn(self.downsample)


def _build(role: str, spec: BlockSpec, options: Mapping[str, Any]) -> SCBottleneck:
    return SCBottleneck(spec.inplanes, spec.planes, spec.stride, downsample=spec.downsample,
                        is_first=spec.is_first, **options)


def _recognise(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """A reference SCNet: its bottlenecks hold ``scconv.k2`` (the down-sampled calibration branch)."""
    return {} if any(".scconv.k2." in k for k in state) else None


register_conv_kind(ConvKind(
    name="sc", title="SCConv", module=SCBottleneck, build=_build,
    # Sec. 3.2: SCNet is ResNet with every bottleneck replaced by the SC bottleneck
    roles=frozenset({"bottleneck"}),
    options=options_from_signature(SCBottleneck, ("interpolation", "pooling_r", "avd"), help={
        "interpolation": "Up() of Eq. 3: nearest (reference code) or bilinear (paper text)",
        "pooling_r": "down-sampling rate r of the calibration branch (default 4)",
        "avd": "stride by a 3x3 average pooling after the branches (the reference's v1d models)",
    }, choices={"interpolation": _INTERPOLATIONS}, bounds={"pooling_r": (1, 64)}),
    recognise=_recognise, reference="scnet",
    zoo_names={"resnet50": "scnet50", "resnet101": "scnet101"},
    # the reference's SCNet-v1d (its scnet50_v1d / scnet101_v1d): ResNet-D's deep stem and
    # average-pool downsampling, and avd; the v1d stem is 32 wide in scnet50_v1d, 64 in scnet101_v1d
    zoo_models=tuple(ZooModel(f"{name}_v1d", base, (("deep_stem", True), ("stem_width", width), ("avg_down", True)),
                              (("avd", True),))
                     for name, base, width in (("scnet50", "resnet50", 32), ("scnet101", "resnet101", 64))),
    targets=(
        target("scnet50", "25.6 M", "4.0 G", "SCNet Table 1"),
        target("scnet101", "44.6 M", "7.2 G", "SCNet Table 1"),
    ),
    claim=ClaimFacts(ClaimCheck.SAME_COST, subject="SCNet-50", title="SCNet-50 costs what ResNet-50 costs",
                     source="SCNet Table 1"),
    aliases=("scnet",),
    paper="Improving Convolutional Networks with Self-Calibrated Convolutions (CVPR 2020)",
))
