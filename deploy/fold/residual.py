"""Identity residuals around one convolution: a module whose forward is ``x + conv(x)`` becomes one conv.

timm's EfficientViT (MSRA) wraps its depthwise token mixers in ``ResidualDrop`` (``x + m(x)``,
the drop only in training), which ``reparameterize_model`` leaves as a Conv and an Add; fold
coverage lists it as parallel branches. The identity is a kernel too: with the same channels in
and out, stride 1 and "same" zero padding, ``x + conv(x)`` is the conv whose kernel has 1 added at
the centre tap of each channel's own input (``conv.weight[c, c % (C / groups), k // 2, k // 2]``).
The modules are found with torch.fx (each traced alone: a graph of exactly ``add(x, conv(x))``)
and the fold is measured like every other (``deploy.fold.probe.Workbench``).
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx
from torch import nn


def _conv_of_residual(module: nn.Module) -> nn.Conv2d | None:
    """The conv of a module whose traced forward is ``x + conv(x)`` (either order), when the identity fits its kernel."""
    try:
        graph = torch.fx.Tracer().trace(module)
    except Exception:  # noqa: BLE001 - fx raises many types on untraceable code: not this pattern
        return None
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(nodes) != 2 or len(inputs) != 1:
        return None
    call, add = nodes
    if call.op != "call_module" or call.args != (inputs[0],) or call.kwargs:
        return None
    if add.op != "call_function" or add.target not in (operator.add, torch.add) or set(add.args) != {inputs[0], call}:
        return None
    conv = module.get_submodule(str(call.target))
    return conv if isinstance(conv, nn.Conv2d) and _identity_fits(conv) else None


def _identity_fits(conv: nn.Conv2d) -> bool:
    """Same channels in and out, stride 1, odd kernel, "same" zero padding: the identity is a centre tap."""
    if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
        return False
    same = all(p == d * (k // 2) and k % 2 == 1 for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))
    return same and conv.in_channels == conv.out_channels and tuple(conv.stride) == (1, 1)


@torch.no_grad()
def absorb_identity(module: nn.Module) -> nn.Conv2d:
    """The conv equal to ``module`` (``x + conv(x)``, as ``residual_convs`` found it)."""
    conv = _conv_of_residual(module)
    assert conv is not None  # residual_convs found it
    fused = copy.deepcopy(conv)
    per_group = conv.in_channels // conv.groups
    channels = torch.arange(conv.out_channels)
    fused.weight[channels, channels % per_group, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] += 1
    return fused


def residual_convs(model: nn.Module) -> list[str]:
    """Qualified names of the modules ``x + conv(x)`` (outermost first; none inside another)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in found):
            continue
        if 0 < len(list(module.children())) <= 2 and _conv_of_residual(module) is not None:
            found.append(name)
    return found
