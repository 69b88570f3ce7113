"""Params and MACs of one zoo model in the papers' deploy form, beside the paper's figures.

Shared by `deploy zoo list` and `deploy claims` (which holds the counts against the
papers' claims).
"""

from __future__ import annotations

from typing import Any

import torch

from deploy.fold.fold import fold_model
from deploy.layers.paper import parse_count
from deploy.models.complexity import count_macs, count_macs_thop, count_params
from deploy.models.zoo import build_model, paper_target

_PARAMS = ("params: trainable parameters of the deploy form as the papers count it (CoC/DO-Conv folded to "
           "convolutions, BatchNorm kept); ")
#: how each MAC convention counts, in one line each
CONVENTIONS = {
    "conv": _PARAMS + "MACs: multiply-accumulates of convolutions and matrix products (functional ones "
    "included), torch's FlopCounterMode at batch 1 and the arch's input size, MACs = FLOPs / 2.",
    "thop": _PARAMS + "MACs: thop's convention (pytorch-OpCounter, which the SPConv tables use): "
    "convolutions and linear layers as MACs plus 2 ops per BatchNorm element (4 with affine) and "
    "pooling ops, at batch 1 and the arch's input size.",
}
CONVENTION = CONVENTIONS["conv"]


def zoo_row(arch: str, conv: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Params and MACs of one zoo entry in the papers' deploy form, beside the paper's figures.

    The model is built on the meta device: counting needs shapes only, so even ResNet-101
    at 224x224 counts in milliseconds.
    """
    with torch.device("meta"):
        model = build_model(arch, conv, **kwargs).eval()
    deploy_form, _ = fold_model(model, inplace=True, fuse_bn=False, measure=False)
    target = paper_target(model.arch, model.conv, dict(model.conv_kwargs))
    return {
        "arch": model.arch,
        "conv": model.conv,
        "conv_kwargs": dict(model.conv_kwargs),
        "input_shape": list(model.input_shape),
        "params": count_params(deploy_form),
        "macs": count_macs(deploy_form, tuple(model.input_shape)),
        "macs_thop": count_macs_thop(deploy_form, tuple(model.input_shape)),
        "paper_convention": target.convention if target else None,
        "paper_params": parse_count(target.params)[0] if target else None,
        "paper_macs": parse_count(target.macs)[0] if target else None,
        "paper_printed": [target.params, target.macs] if target else None,
        "paper_source": target.source if target else None,
        "paper_note": target.note if target else "",
    }
