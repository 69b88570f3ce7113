"""The re-parameterization conventions of other code bases, and BatchNorm subclasses split in two.

Conventions (the duck typing of timm's ``reparameterize_model``, which RepVGG, MobileOne,
FastViT, LeViT and our paper layers follow): a module that can fold itself offers, in
this order of preference,

* ``fuse()`` — returns the module that replaces it (LeViT's ConvNorm returns an
  ``nn.Conv2d``); a ``None`` return means it fused itself in place;
* ``reparameterize()`` — folds itself in place (timm's RepVGG and MobileOne blocks);
* ``switch_to_deploy()`` — folds itself in place (RepVGG's reference code, our layers).

Only methods callable without arguments count: a VAE's ``reparameterize(mu, logvar)`` is
not a fold.

BatchNorm subclasses (timm's ``BatchNormAct2d``: normalise, then ``drop``, then ``act``)
fuse into the conv before them like ``nn.BatchNorm2d``; what they apply after the
normalisation is kept as ``PostNorm``, their child modules run in registration order.
That reading of the subclass is checked, not assumed: ``post_norm`` evaluates the
subclass and the affine map followed by ``PostNorm`` on a float64 input and refuses the
split unless they agree to rounding.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from deploy.core.errors import BadInputError
from deploy.layers.conv_bn import bn_scale_shift

CONVENTIONS = ("fuse", "reparameterize", "switch_to_deploy")  # timm's order of preference


def _callable_without_arguments(fn: Callable[..., object]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def convention_of(module: nn.Module) -> str | None:
    """The method by which ``module`` folds itself (``CONVENTIONS`` order), or None."""
    for name in CONVENTIONS:
        fn = getattr(module, name, None)
        if callable(fn) and _callable_without_arguments(fn):
            return name
    return None


@torch.no_grad()
def apply_convention(module: nn.Module, method: str, where: str) -> nn.Module:
    """Call ``module.<method>()``; the module that stands in its place afterwards."""
    try:
        result = getattr(module, method)()
    except Exception as exc:  # noqa: BLE001 - the model's own method may raise anything: name it and what it said
        text = str(exc).strip().splitlines()
        raise BadInputError(f"{where}.{method}() ({type(module).__name__}) failed ({type(exc).__name__}: "
                            f"{text[0][:200] if text else 'no message'}): fix the layer's fold method or export "
                            "without `fold`") from exc
    if method != "fuse" or result is None:
        return module
    if not isinstance(result, nn.Module):
        raise BadInputError(f"{where}.fuse() returned a {type(result).__name__}, not the module that replaces it: "
                            "make fuse() return an nn.Module (or None when it fuses in place)")
    return result


class PostNorm(nn.Module):
    """What a BatchNorm subclass applies after normalising (its children, in registration order).

    Stands in for the subclass once its normalisation is fused into the conv before it;
    the children keep their names, so ``bn.act`` stays ``bn.act``.
    """

    def __init__(self, children: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


@torch.no_grad()
def post_norm(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What replaces ``bn`` after its conv absorbed it: ``nn.Identity`` for a plain BatchNorm2d,
    ``PostNorm`` for a subclass when the split is exact, else None (keep the pair).

    ``fold_model`` calls this on its float64 copy, where "exact" means agreement to float64
    rounding (relative 1e-12); in float32 the bound is 1e-5.
    """
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    tail = PostNorm(dict(bn.named_children()))
    scale, shift = bn_scale_shift(bn)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, bn.num_features, 3, 3, generator=gen, dtype=scale.dtype).to(scale.device)
    expected = bn(x)
    split = tail(x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1))
    bound = (1e-12 if scale.dtype == torch.float64 else 1e-5) * (float(expected.abs().max()) or 1.0)
    return tail if expected.shape == split.shape and float((expected - split).abs().max()) <= bound else None
