"""DO-Conv: depthwise over-parameterized convolution (Cao et al., paper 001).

A DO-Conv layer composes a depthwise kernel ``D`` with a conventional kernel ``W``
(Sec. 3, Eq. 3): ``O = W * (D o P) = (D^T o W) * P``.  The second form, *kernel
composition*, gives one ordinary kernel ``W' = D^T o W`` that depends on parameters
only, so the layer folds exactly into a single ``nn.Conv2d`` after training.
``groups`` switches between DO-Conv (1), DO-DConv (= in_channels, Eq. 4) and DO-GConv.

Parameters are named and shaped exactly as in the authors' PyTorch layer
(``yangyanli/DO-Conv``, ``do_conv_pytorch.py``) so their checkpoints load unchanged:

* ``W``      (out, in/groups, D_mul), kaiming-uniform(a=sqrt(5)) like ``nn.Conv2d``;
* ``D``      (in, M*N, D_mul), zeros: the paper trains ``D' = D - I`` (Sec. 4);
* ``d_diag`` (in, M*N, D_mul), frozen Parameter (``requires_grad=False``, so it is in
  the state_dict): identity(M*N) tiled along D_mul as often as it fits, the rest
  zeros (Sec. 4.5, "What if D_mul > M x N?");
* ``bias``   (out,) or None; on by default, like ``nn.Conv2d`` and the reference layer (the
  zoo passes ``bias=False`` where a BatchNorm follows).

1x1 kernels have no ``D``/``d_diag`` and ``D_mul`` is ignored (fixed to 1), as in the
reference: there is no spatial patch to over-parameterize (Sec. 4).

Composite kernel (the reference's formula, kept verbatim in meaning)::

    einsum('ims,ois->oim', D + d_diag, W.reshape(out//groups, in, D_mul))
        .reshape(out, in/groups, M, N)

For groups > 1 this raw reshape pairs filter ``o`` / input ``j`` of its group with
``D[(o * in/groups + j) mod in]`` rather than with the depthwise kernel of the input
channel it actually reads.  We reproduce it exactly so that reference checkpoints
compute identically; for groups == 1 and for out_channels == groups it coincides
with the paper's Eq. 3 / Eq. 4.

Decisions of ours (differences from the reference layer):

* ``D_mul < M*N`` raises ValueError (the paper requires D_mul >= M x N; below that the
  layer is a depthwise-separable convolution, not DO-Conv).
* Non-zero ``padding_mode`` pads (left=right=padding[1], top=bottom=padding[0]) like
  today's ``nn.Conv2d``.  The reference, written for torch 1.5, used the then-current
  un-reversed order, which differs only for asymmetric padding; matching
  ``nn.Conv2d`` is what makes ``to_conv2d()`` exact.
* String paddings ('same', 'valid') are not supported (neither does the reference).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from deploy.layers.conv_bn import FoldsToConv, install_kernel
from deploy.layers.paper import ClaimCheck, ClaimFacts
from deploy.layers.registry import CONV_ROLES, ConvKind, ConvSpec, options_from_signature, register_conv_kind

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def identity_tiled(in_channels: int, mn: int, d_mul: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``d_diag``: identity(M*N) tiled along D_mul as often as it fits, zeros after (Sec. 4.5)."""
    reps = d_mul // mn
    eye = torch.eye(mn, dtype=dtype).repeat(1, reps)  # (mn, mn*reps)
    rest = torch.zeros(mn, d_mul - mn * reps, dtype=dtype)
    return torch.cat([eye, rest], dim=1).unsqueeze(0).repeat(in_channels, 1, 1).contiguous()


class DOConv2d(FoldsToConv):
    """Drop-in ``nn.Conv2d`` replacement trained as ``W' = D^T o W`` (DO-Conv, Eq. 3).

    ``switch_to_deploy()`` replaces ``W``/``D``/``d_diag`` by a single ``weight``;
    ``to_conv2d()`` returns the equivalent plain ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        D_mul: int | None = None,  # noqa: N803 (reference name)
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"DOConv2d: padding_mode={padding_mode!r} must be one of {_PADDING_MODES}")
        self._init_geometry("DOConv2d", in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                            padding_mode)
        self._reversed_padding_repeated_twice = (self.padding[1],) * 2 + (self.padding[0],) * 2

        m, n = self.kernel_size
        mn = m * n
        if mn == 1:
            self.D_mul = 1  # reference: D_mul is meaningless for 1x1 kernels and ignored
        else:
            d_mul = mn if D_mul is None else int(D_mul)
            if D_mul is not None and d_mul != D_mul:
                raise ValueError(f"DOConv2d: D_mul={D_mul!r} must be an integer >= M*N={mn}")
            if d_mul < mn:
                raise ValueError(
                    f"DOConv2d: D_mul={D_mul} must be >= M*N={mn} for a {m}x{n} kernel "
                    "(Sec. 3); leave it None for the paper's default D_mul = M*N"
                )
            self.D_mul = d_mul

        self.W = nn.Parameter(torch.empty(out_channels, in_channels // groups, self.D_mul))
        if mn > 1:
            self.D = nn.Parameter(torch.zeros(in_channels, mn, self.D_mul))
            self.d_diag = nn.Parameter(identity_tiled(in_channels, mn, self.D_mul), requires_grad=False)
        else:
            self.register_parameter("D", None)
            self.register_parameter("d_diag", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W kaiming-uniform(a=sqrt(5)) and bias U(+-1/sqrt(fan_in)) as nn.Conv2d; D zeros (Sec. 4)."""
        if self.deployed:
            raise RuntimeError("DOConv2d.reset_parameters() after switch_to_deploy(): build a new layer instead")
        nn.init.kaiming_uniform_(self.W, a=math.sqrt(5))
        if self.D is not None:
            with torch.no_grad():
                self.D.zero_()
        if self.bias is not None:
            fan_in = self.W.shape[1] * self.W.shape[2]
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def composite_kernel(self) -> torch.Tensor:
        """The (out, in/groups, M, N) kernel W' = D^T o W of Eq. 3 (reference raw-reshape layout)."""
        if self.deployed:
            return self.weight
        m, n = self.kernel_size
        shape = (self.out_channels, self.in_channels // self.groups, m, n)
        if self.D is None:
            return self.W.reshape(shape)
        d_full = self.D + self.d_diag  # (in, M*N, D_mul)
        w = self.W.reshape(self.out_channels // self.groups, self.in_channels, self.D_mul)
        return torch.einsum("ims,ois->oim", d_full, w).reshape(shape)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.composite_kernel())

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """In place: drop W/D/d_diag, keep one ``weight`` (+ ``bias``); idempotent and exact."""
        install_kernel(self, ["W", "D", "d_diag"])

    def extra_repr(self) -> str:
        return self.geometry_repr(f"D_mul={self.D_mul}")


def _build(role: str, spec: ConvSpec, options: Mapping[str, Any]) -> DOConv2d:
    return DOConv2d(spec.in_channels, spec.out_channels, spec.kernel_size, stride=spec.stride,
                    padding=spec.padding, bias=False, **options)


def _recognise(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """A reference DO-Conv network: its layers hold ``W`` beside ``D`` / ``d_diag``."""
    keys = set(state)
    if any(k.endswith(".W") for k in keys) and any(k.endswith((".d_diag", ".D")) for k in keys):
        return {}
    return None


register_conv_kind(ConvKind(
    name="doconv", title="DO-Conv", module=DOConv2d, build=_build,
    # Sec. 4: every conv layer is over-parameterized (a 1x1 simply has no D).
    roles=frozenset(CONV_ROLES),
    options=options_from_signature(DOConv2d, ("D_mul",), help={"D_mul": "depth multiplier, >= M*N (default M*N)"},
                                   bounds={"D_mul": (1, 4096)}),
    recognise=_recognise, reference="doconv",
    folded_twin="DO-Conv Sec. 3",
    claim=ClaimFacts(ClaimCheck.ZERO_OVERHEAD, subject="DO-Conv-ResNet50",
                     source='DO-Conv abstract and Sec. 3 ("exactly equivalent to that of a convolutional layer")'),
    paper="DO-Conv: Depthwise Over-parameterized Convolutional Layer (IEEE TIP 2022)",
))
