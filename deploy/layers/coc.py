"""CoC: Convolution of Convolution (Zhao et al., paper 000).

The basic kernels ``b0`` of shape (co, ci, k, k) are divided into groups of ``sa**2``
(output channels zero-padded to a multiple of ``sa**2``), each group re-arranged
along height and width into one (ci, sa*k, sa*k) "feature", convolved by a "super"
kernel and re-arranged back (Sec. 3.1, Fig. 2, Eq. 1): ``f_o = xi^-1(s * xi(b0)) * f_i``.
The super convolution acts on parameters only, so after training the layer is one
ordinary convolution (Sec. 3.1, "re-parameterizing CoC back to common convolution").

Layout and names follow the authors' ``Coc2d`` (``Genera1Z/ConvolutionOfConvolution``,
``mmcls/models/coc/layers.py``, share='ci', the setting of all their configs; Fig. 6):

* ``weight9``  (ci, co_pad/sa**2, sa*kh, sa*kw): the learnable, already re-arranged
  basic kernels; output channel ``o = g*sa**2 + a*sa + b`` sits in column ``g`` at
  block row ``a``, block column ``b``; ci is the "batch" of the super convolution.
* ``conv_super.conv.weight`` (co_pad/sa**2, 1, skh, skw) (+ ``conv_super.conv.bias``
  when there is no norm, the reference ConvModule's bias='auto' rule): a depthwise
  convolution over the co_pad/sa**2 groups, stride 1, "same" padding.  With
  ``dilate`` the reference's table gives (kernel, dilation) = (3, 2) for k=3, (5, 2)
  for k=5 and (5, 3) for k=7 at skp=2 (k=3 covers k+skp = 5); without it the kernel
  is k+skp, dilation 1.
* ``stnd``: the super kernel is weight-standardised (reference ``Wsc2d``: per output
  channel ``(w - mean) / (std_unbiased + 1e-5)``).
* ``ln_super``: ``conv_super.ln`` = LayerNorm([co_pad/sa**2, sa*kh, sa*kw]) on the
  super output (reference sbn='LN').
* ``ln_kernel``: ``norm_final`` = LayerNorm([ci, kh, kw]) on each final kernel
  (reference ws='LN').
* ``skip``: the re-arranged basic kernels are added to the super output.
* ``bias`` (out,) or None, added by the final convolution.

The authors' ImageNet configs use sa=2, sk_plus=2, skip, dilat, wsc, ws='LN',
sbn='LN', i.e. ``CoCConv2d(..., stnd=True, ln_super=True, ln_kernel=True)``.

Decisions of ours (not in, or different from, the reference):

* ``sl`` (Fig. 7, "number of super layers") is not in the published code.  Layer 1 is
  ``conv_super`` (reference keys), layer i >= 2 is ``conv_super{i}``; each is
  conv (+ LayerNorm when ``ln_super``), no activation (the association must stay
  linear, Eq. 2), and ``skip`` is one residual around the whole stack.
* The reference default normalisation (BatchNorm over the ci "batch", sbn='BN') and
  final weight standardisation (ws=True) are not offered: BN in train mode depends on
  batch statistics of the parameters, which the project contract's options do not
  cover.  All offered options depend on parameters only, so the fold is exact.
* ``sa`` >= 1 is accepted (the reference asserts sa > 1; sa=1 is the no-association
  ablation).  ``dilate`` with skp=0 raises, as the reference asserts.  Kernel sizes
  must be odd and >= 3 per dimension (1x1 convs are not replaced, Sec. 4.1 c1x1=false);
  with ``dilate`` they must be 3, 5 or 7 with skp in {2, 4, 6} (the reference table).
* Init: ``weight9`` is U(+-1/sqrt(ci*kh*kw)), the ``nn.Conv2d`` default for the basic
  kernels (the reference applied kaiming-uniform to weight9's own fan-in,
  co_pad*kh*kw).  Super kernels start near the identity so that the layer starts close
  to its basic kernels: every super layer is a centred Dirac plus N(0, (0.1/sqrt(n))^2)
  noise (n = skh*skw), except that with ``skip`` the last one is the noise alone
  (output = b0 + small perturbation).  Super biases start at zero, LayerNorms at
  (1, 0).  With ``stnd`` or the LayerNorms the scale is set by the normalisation
  (unit-variance kernels, as in the reference; it expects a BatchNorm after the conv).
* ``padding_mode`` is always 'zeros' (the reference ignores it too); padding must be
  integer(s).  ``groups`` is passed through as the reference does (ci = in/groups).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from deploy.layers.conv_bn import FoldsToConv, install_kernel
from deploy.layers.paper import ClaimCheck, ClaimFacts
from deploy.layers.registry import ConvKind, ConvSpec, options_from_signature, register_conv_kind

# Reference table (dilat=True, "larger"): kernel -> {skp: (super kernel, super dilation)}.
_DILATED_SUPER = {
    3: {2: (3, 2), 4: (3, 3), 6: (5, 2)},
    5: {2: (5, 2), 4: (5, 3), 6: (5, 4)},
    7: {2: (5, 3), 4: (5, 4), 6: (7, 3)},
}
_NOISE = 0.1  # relative size of the super kernels' random part at init


def super_geometry(k: int, skp: int, dilate: bool) -> tuple[int, int]:
    """(super kernel size, super dilation) for one spatial dimension (Sec. 3.2, Fig. 7)."""
    if not dilate:
        return k + skp, 1
    return _DILATED_SUPER[k][skp]


def standardize(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Weight standardisation per output channel, as the reference ``Wsc2d`` (stnd)."""
    mean = weight.mean(dim=(1, 2, 3), keepdim=True)
    std = weight.std(dim=(1, 2, 3), keepdim=True)
    return (weight - mean) / (std + eps)


def _check_association(kernel_size: tuple[int, int], sa: int, skp: int, sl: int, dilate: bool) -> None:
    """ValueError unless the association hyper-parameters are ones the paper / reference define."""
    if any(k < 3 or k % 2 == 0 for k in kernel_size):
        raise ValueError(
            f"CoCConv2d: kernel_size={kernel_size} must be odd and >= 3 in each dimension; "
            "keep 1x1 convolutions as nn.Conv2d (paper Sec. 4.1, c1x1=false)"
        )
    if int(sa) != sa or sa < 1:
        raise ValueError(f"CoCConv2d: sa={sa} (spatial association) must be an integer >= 1; the paper uses 2")
    if int(skp) != skp or skp < 0 or skp % 2:
        raise ValueError(f"CoCConv2d: skp={skp} (super kernel plus) must be an even integer >= 0; the paper uses 2")
    if int(sl) != sl or sl < 1:
        raise ValueError(f"CoCConv2d: sl={sl} (super layers) must be an integer >= 1; the paper uses 1")
    if dilate:
        if skp == 0:
            raise ValueError("CoCConv2d: dilate=True needs skp > 0 (reference); pass skp=2 or dilate=False")
        if any(k not in _DILATED_SUPER for k in kernel_size) or skp not in _DILATED_SUPER[3]:
            raise ValueError(
                f"CoCConv2d: dilate=True supports kernel sizes 3, 5, 7 with skp in 2, 4, 6 (reference table); "
                f"got kernel_size={kernel_size}, skp={skp}; pass dilate=False"
            )


class SuperLayer(nn.Module):
    """One super layer: depthwise conv over the co/sa**2 groups (+ LayerNorm); ci is the batch."""

    def __init__(
        self, groups: int, kernel: tuple[int, int], dilation: tuple[int, int], feature: tuple[int, int],
        stnd: bool, layer_norm: bool,
    ) -> None:
        super().__init__()
        padding = (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
        self.stnd = stnd
        # Holds the parameters under the reference's key names; called functionally so that
        # MAC-counting hooks on nn.Conv2d see only the real convolution.
        self.conv = nn.Conv2d(
            groups, groups, kernel, padding=padding, dilation=dilation, groups=groups, bias=not layer_norm
        )
        self.ln = nn.LayerNorm([groups, *feature]) if layer_norm else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = standardize(self.conv.weight) if self.stnd else self.conv.weight
        z = F.conv2d(z, w, self.conv.bias, 1, self.conv.padding, self.conv.dilation, self.conv.groups)
        return self.ln(z) if self.ln is not None else z


class CoCConv2d(FoldsToConv):
    """Drop-in ``nn.Conv2d`` replacement whose kernels are associated by a super convolution.

    ``switch_to_deploy()`` replaces weight9 / super layers / norms by one ``weight``;
    ``to_conv2d()`` returns the equivalent plain ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        sa: int = 2,
        skp: int = 2,
        sl: int = 1,
        skip: bool = True,
        dilate: bool = True,
        stnd: bool = False,
        ln_super: bool = False,
        ln_kernel: bool = False,
    ) -> None:
        super().__init__()
        self._init_geometry("CoCConv2d", in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        _check_association(self.kernel_size, sa, skp, sl, dilate)
        self.sa, self.skp, self.sl = int(sa), int(skp), int(sl)
        self.skip, self.dilate, self.stnd = bool(skip), bool(dilate), bool(stnd)
        self.ln_super, self.ln_kernel = bool(ln_super), bool(ln_kernel)

        kh, kw = self.kernel_size
        ci = in_channels // groups
        kernel_groups = math.ceil(out_channels / self.sa**2)  # groups of sa**2 kernels, zero-padded (Sec. 3.1)
        feature = (self.sa * kh, self.sa * kw)
        self.weight9 = nn.Parameter(torch.empty(ci, kernel_groups, *feature))
        geometry = [super_geometry(k, self.skp, self.dilate) for k in self.kernel_size]
        kernel = (geometry[0][0], geometry[1][0])
        dil = (geometry[0][1], geometry[1][1])
        for i in range(1, self.sl + 1):
            self.add_module(self._super_name(i), SuperLayer(kernel_groups, kernel, dil, feature, self.stnd, self.ln_super))
        self.norm_final = nn.LayerNorm([ci, kh, kw]) if self.ln_kernel else None
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @staticmethod
    def _super_name(i: int) -> str:
        return "conv_super" if i == 1 else f"conv_super{i}"

    def super_layers(self) -> list[SuperLayer]:
        """The super layers in application order (empty after switch_to_deploy)."""
        if self.deployed:
            return []
        return [getattr(self, self._super_name(i)) for i in range(1, self.sl + 1)]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Basic kernels as nn.Conv2d; super kernels near identity (see module docstring)."""
        if self.deployed:
            raise RuntimeError("CoCConv2d.reset_parameters() after switch_to_deploy(): build a new layer instead")
        kh, kw = self.kernel_size
        bound = 1.0 / math.sqrt(self.weight9.shape[0] * kh * kw)
        nn.init.uniform_(self.weight9, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        layers = self.super_layers()
        for i, layer in enumerate(layers):
            w = layer.conv.weight
            n = w.shape[2] * w.shape[3]
            nn.init.normal_(w, 0.0, _NOISE / math.sqrt(n))
            if not (self.skip and i == len(layers) - 1):
                w[:, :, w.shape[2] // 2, w.shape[3] // 2] += 1.0
            if layer.conv.bias is not None:
                layer.conv.bias.zero_()
            if layer.ln is not None:
                layer.ln.reset_parameters()
        if self.norm_final is not None:
            self.norm_final.reset_parameters()

    def composite_kernel(self) -> torch.Tensor:
        """The (out, in/groups, kh, kw) kernel ``xi^-1(s * xi(b0))`` of Eq. 1 (+ norms)."""
        if self.deployed:
            return self.weight
        z: torch.Tensor = self.weight9
        for layer in self.super_layers():
            z = layer(z)
        if self.skip:
            z = z + self.weight9
        ci, kernel_groups = z.shape[:2]
        kh, kw = self.kernel_size
        sa = self.sa
        # (ci, groups, sa*kh, sa*kw) -> (groups, sa, sa, ci, kh, kw): o = g*sa*sa + a*sa + b (re-arrange back)
        groups = kernel_groups
        kernel = z.reshape(ci, groups, sa, kh, sa, kw).permute(1, 2, 4, 0, 3, 5).reshape(groups * sa * sa, ci, kh, kw)
        kernel = kernel[: self.out_channels]
        if self.norm_final is not None:
            kernel = self.norm_final(kernel)
        return kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.composite_kernel(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """In place: drop weight9, super layers and norms, keep ``weight`` (+ ``bias``); idempotent."""
        install_kernel(self, [self._super_name(i) for i in range(1, self.sl + 1)] + ["weight9", "norm_final"])

    def extra_repr(self) -> str:
        return self.geometry_repr(f"sa={self.sa}, skp={self.skp}, sl={self.sl}, skip={self.skip}, dilate={self.dilate}, "
                                  f"stnd={self.stnd}, ln_super={self.ln_super}, ln_kernel={self.ln_kernel}")


def _build(role: str, spec: ConvSpec, options: Mapping[str, Any]) -> CoCConv2d:
    return CoCConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, stride=spec.stride,
                     padding=spec.padding, bias=False, **options)


register_conv_kind(ConvKind(
    name="coc", title="CoC", module=CoCConv2d, build=_build,
    # Sec. 4.1 (and the reference: c1x1=False): every conv with a kernel larger than 1x1,
    # i.e. the 3x3s in the blocks and the stem; 1x1s stay plain.
    roles=frozenset({"stem", "block3x3"}),
    options=options_from_signature(CoCConv2d, ("sa", "skp", "sl", "skip", "dilate", "stnd", "ln_super", "ln_kernel"), help={
        "sa": "spatial association: kernels grouped sa x sa",
        "skp": "super kernel plus (super kernel = k + skp)",
        "sl": "number of super layers",
        "skip": "residual around the super layers",
        "dilate": "dilated super kernel (reference table)",
        "stnd": "weight-standardised super kernel",
        "ln_super": "LayerNorm after each super layer",
        "ln_kernel": "LayerNorm on each final kernel",
    }, bounds={"sa": (1, 8), "skp": (0, 8), "sl": (1, 8)}),
    folded_twin="CoC Sec. 4.2",
    claim=ClaimFacts(ClaimCheck.ZERO_OVERHEAD, subject="CoC-ResNet50",
                     source='CoC Sec. 4.2 ("definitely no extra cost")'),
    paper="Convolution of Convolution: Let Kernels Spatially Collaborate (CVPR 2022)",
))
