"""Seeded, non-trivial weights for zoo models that have not been trained.

A fold that is wrong can hide behind identity BatchNorms (mean 0, var 1, gamma 1,
beta 0) and behind zero-initialised training parameters (DO-Conv's D). Here every
BatchNorm gets running statistics measured on random inputs and then perturbed, random
affine parameters, and every all-zero trainable tensor gets small seeded noise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deploy.core.errors import BadInputError, first_line
from deploy.models.resnet import ZooNet
from deploy.models.zoo import build_model, default_input_shape


@torch.no_grad()
def randomize_model(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0, batch: int = 4) -> nn.Module:
    """Give ``model`` seeded random weights and realistic but non-trivial BN statistics (in place)."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.requires_grad and not bool(param.any()):
            param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
        bn.weight.copy_(torch.empty(bn.num_features).uniform_(0.5, 1.5, generator=gen))
        bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=gen))
    was_training = model.training
    model.train()
    for _ in range(2):
        model(torch.randn((batch, *input_shape), generator=gen))
    model.train(was_training)
    for bn in bns:
        bn.momentum = 0.1
        assert bn.running_mean is not None and bn.running_var is not None  # reset_running_stats above made them
        std = bn.running_var.sqrt()
        bn.running_mean.add_(0.1 * std * torch.randn(bn.num_features, generator=gen))
        bn.running_var.mul_(torch.empty(bn.num_features).uniform_(0.8, 1.25, generator=gen))
    return model


def random_model(arch: str, conv: str | None = None, *, input_size: tuple[int, int] | None = None,
                 num_classes: int | None = None, seed: int = 0, **conv_kwargs: Any) -> ZooNet:
    """A zoo model with seeded random weights and non-trivial BN statistics, in eval mode, at
    ``input_size`` (H, W; default the arch's): what `deploy zoo create` and `deploy claims` write and
    the tests export. A size the model cannot take is a BadInputError naming it."""
    base = default_input_shape(arch)
    shape = (base[0], *input_size) if input_size is not None else None
    torch.manual_seed(seed)
    model = build_model(arch, conv, num_classes, input_shape=shape, **conv_kwargs)
    try:
        randomize_model(model, tuple(model.input_shape), seed=seed)
    except (RuntimeError, ValueError) as exc:
        size = "x".join(map(str, model.input_shape[1:]))
        reason = first_line(exc, 200)
        raise BadInputError(f"{model.arch} cannot take a {size} input ({reason}); choose another `input_size`") from exc
    return model.eval()
