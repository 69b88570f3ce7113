"""CoC (paper 000, Sec. 3.1 Fig. 2 Eq. 1, Sec. 3.2 Fig. 6-7): fold exactness, layout, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deploy.layers.coc import CoCConv2d

FAST = settings(max_examples=30, deadline=None)


@st.composite
def configs(draw: st.DrawFn) -> dict:
    """Random CoCConv2d hyper-parameters plus an input size that fits them (<= 12 x 12)."""
    k = draw(st.sampled_from([3, 5, 7]))
    dilate = draw(st.booleans())
    skp = draw(st.sampled_from([2, 4, 6] if dilate else [0, 2, 4]))
    groups = draw(st.sampled_from([1, 1, 1, 2]))
    in_c = groups * draw(st.integers(1, 16 // groups))
    out_c = groups * draw(st.integers(1, 16 // groups))
    stride = draw(st.sampled_from([1, 2]))
    dil = draw(st.sampled_from([1, 2]))
    eff = dil * (k - 1) + 1
    pad = draw(st.integers(max(0, (eff - 11) // 2), (eff - 1) // 2))
    size = draw(st.integers(max(eff - 2 * pad, 1), 12))
    return dict(
        layer=dict(in_channels=in_c, out_channels=out_c, kernel_size=k, stride=stride, padding=pad, dilation=dil,
                   groups=groups, bias=draw(st.booleans()), sa=draw(st.sampled_from([1, 2, 2, 3])), skp=skp,
                   sl=draw(st.sampled_from([1, 1, 2])), skip=draw(st.booleans()), dilate=dilate,
                   stnd=draw(st.booleans()), ln_super=draw(st.booleans()), ln_kernel=draw(st.booleans())),
        size=size, seed=draw(st.integers(0, 2**16)),
    )


def _randomized(cfg: dict, dtype: torch.dtype) -> CoCConv2d:
    """A layer with every parameter random, norms' affine parts included."""
    torch.manual_seed(cfg["seed"])
    layer = CoCConv2d(**cfg["layer"]).to(dtype)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name != "weight9":
                p.add_(0.3 * torch.randn_like(p))
    return layer.eval()


def _layer_norm(z: np.ndarray, axes: tuple, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = z.mean(axis=axes, keepdims=True)
    var = z.var(axis=axes, keepdims=True)
    return (z - mean) / np.sqrt(var + eps) * gamma + beta


def reference_kernel(layer: CoCConv2d) -> np.ndarray:
    """Fig. 2 step by step in numpy float64: super-convolve each ci slice, re-arrange back, norms."""
    npy = {k: v.detach().double().numpy() for k, v in layer.state_dict().items()}
    w9 = npy["weight9"]  # (ci, co4, sa*kh, sa*kw)
    ci, co4, hh, ww = w9.shape
    z = w9
    for i in range(1, layer.sl + 1):
        prefix = "conv_super" if i == 1 else f"conv_super{i}"
        s = npy[f"{prefix}.conv.weight"]  # (co4, 1, skh, skw)
        if layer.stnd:
            s = (s - s.mean(axis=(1, 2, 3), keepdims=True)) / (s.std(axis=(1, 2, 3), ddof=1, keepdims=True) + 1e-5)
        conv = getattr(layer, prefix).conv
        (dh, dw), (ph, pw) = conv.dilation, conv.padding
        zp = np.pad(z, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        out = np.zeros_like(z)
        for u in range(s.shape[2]):  # depthwise cross-correlation, one super kernel per co4 group
            for v in range(s.shape[3]):
                out += s[None, :, 0, u, v, None, None] * zp[:, :, u * dh: u * dh + hh, v * dw: v * dw + ww]
        if f"{prefix}.conv.bias" in npy:
            out += npy[f"{prefix}.conv.bias"][None, :, None, None]
        if layer.ln_super:
            out = np.stack([_layer_norm(o, (0, 1, 2), npy[f"{prefix}.ln.weight"], npy[f"{prefix}.ln.bias"])
                            for o in out])
        z = out
    if layer.skip:
        z = z + w9
    sa = layer.sa
    kh, kw = layer.kernel_size
    kernel = np.zeros((co4 * sa * sa, ci, kh, kw))
    for g in range(co4):
        for a in range(sa):
            for b in range(sa):
                kernel[g * sa * sa + a * sa + b] = z[:, g, a * kh: (a + 1) * kh, b * kw: (b + 1) * kw]
    kernel = kernel[: layer.out_channels]
    if layer.ln_kernel:
        kernel = np.stack([_layer_norm(k, (0, 1, 2), npy["norm_final.weight"], npy["norm_final.bias"])
                           for k in kernel])
    return kernel


@FAST
@given(cfg=configs())
def test_fold_equals_layer_float32_and_float64(cfg: dict) -> None:
    for dtype, check in ((torch.float32, lambda e, y: e <= 1e-5 * y), (torch.float64, lambda e, y: e <= 1e-10)):
        layer = _randomized(cfg, dtype)
        x = torch.randn(2, layer.in_channels, cfg["size"], cfg["size"], dtype=dtype)
        with torch.no_grad():
            y = layer(x)
            conv = layer.to_conv2d()
            y_fold = conv(x)
        assert type(conv) is nn.Conv2d and conv.weight.shape == (layer.out_channels, layer.in_channels // layer.groups,
                                                                  *layer.kernel_size)
        err = (y_fold - y).abs().max().item()
        assert check(err, y.abs().max().item()), (dtype, err)


@FAST
@given(cfg=configs())
def test_kernel_matches_step_by_step_reference_float64(cfg: dict) -> None:
    layer = _randomized(cfg, torch.float64)
    with torch.no_grad():
        kernel = layer.composite_kernel().numpy()
    expected = reference_kernel(layer)
    assert kernel.shape == expected.shape
    assert np.abs(kernel - expected).max() <= 1e-10 * max(1.0, np.abs(expected).max())


@FAST
@given(cfg=configs())
def test_switch_to_deploy_idempotent_with_plain_conv_keys(cfg: dict) -> None:
    layer = _randomized(cfg, torch.float64)
    x = torch.randn(1, layer.in_channels, cfg["size"], cfg["size"], dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        layer.switch_to_deploy()
        y1 = layer(x)
        sd1 = {k: v.clone() for k, v in layer.state_dict().items()}
        layer.switch_to_deploy()
        y2 = layer(x)
    plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, bias=layer.bias is not None,
                      groups=layer.groups).double()
    assert list(layer.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(sd1[k], v) for k, v in layer.state_dict().items())
    assert (y1 - y).abs().max().item() <= 1e-10 and torch.equal(y1, y2)
    assert layer.super_layers() == [] and not hasattr(layer, "weight9")
    plain.load_state_dict(layer.state_dict(), strict=True)


def test_reference_names_and_shapes_of_the_paper_setting() -> None:
    """Authors' ImageNet config (sa=2, sk_plus=2, skip, dilat, wsc, sbn=LN, ws=LN) -> their keys/shapes."""
    layer = CoCConv2d(6, 10, 3, padding=1, bias=True, stnd=True, ln_super=True, ln_kernel=True)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {  # co = 10 padded to 12 -> co4 = 3; feature 2*3 = 6
        "weight9": (6, 3, 6, 6), "bias": (10,), "conv_super.conv.weight": (3, 1, 3, 3),
        "conv_super.ln.weight": (3, 6, 6), "conv_super.ln.bias": (3, 6, 6),
        "norm_final.weight": (6, 3, 3), "norm_final.bias": (6, 3, 3),
    }
    assert layer.conv_super.conv.dilation == (2, 2) and layer.conv_super.conv.padding == (2, 2)
    g = torch.Generator().manual_seed(1)
    ckpt = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    layer.load_state_dict(ckpt, strict=True)
    x = torch.randn(2, 6, 8, 8, generator=g)
    expected = F.conv2d(x, torch.from_numpy(reference_kernel(layer)).float(), ckpt["bias"], padding=1)
    with torch.no_grad():
        assert (layer(x) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    no_norm = CoCConv2d(6, 8, 3)  # no norm in the super conv -> it has a bias (ConvModule bias='auto')
    assert set(no_norm.state_dict()) == {"weight9", "conv_super.conv.weight", "conv_super.conv.bias"}


@pytest.mark.parametrize(
    "k,skp,dilate,expected",
    [(3, 2, True, (3, 2)), (5, 2, True, (5, 2)), (7, 2, True, (5, 3)), (3, 4, True, (3, 3)), (7, 6, True, (7, 3)),
     (3, 2, False, (5, 1)), (7, 0, False, (7, 1))],
)
def test_super_kernel_geometry_and_same_size(k, skp, dilate, expected) -> None:
    layer = CoCConv2d(4, 8, k, skp=skp, dilate=dilate, stride=2, padding=k // 2)
    conv = layer.conv_super.conv
    assert (conv.kernel_size[0], conv.dilation[0]) == expected and conv.groups == 2
    assert layer(torch.randn(1, 4, 12, 12)).shape == (1, 8, 6, 6)


def test_rearrangement_and_init_start_close_to_basic_kernels() -> None:
    """Zero super kernel + skip gives exactly the basic kernels in Fig. 2's order; default init is close."""
    torch.manual_seed(0)
    layer = CoCConv2d(5, 7, 3, padding=1)  # 7 -> padded to 8 kernels, co4 = 2
    w9 = layer.weight9.detach()
    basic = torch.stack([w9[:, o // 4, (o % 4) // 2 * 3: (o % 4) // 2 * 3 + 3, o % 2 * 3: o % 2 * 3 + 3]
                         for o in range(7)])
    kernel = layer.composite_kernel().detach()
    rel = ((kernel - basic).norm() / basic.norm()).item()
    assert 0.0 < rel < 0.3
    bound = 1 / math.sqrt(5 * 9)
    assert w9.abs().max().item() <= bound
    with torch.no_grad():
        layer.conv_super.conv.weight.zero_()
    assert torch.equal(layer.composite_kernel().detach(), basic)
    no_skip = CoCConv2d(5, 7, 3, skip=False, sl=2)
    w9 = no_skip.weight9.detach()
    base = torch.stack([w9[:, o // 4, (o % 4) // 2 * 3: (o % 4) // 2 * 3 + 3, o % 2 * 3: o % 2 * 3 + 3]
                        for o in range(7)])
    assert ((no_skip.composite_kernel().detach() - base).norm() / base.norm()).item() < 0.3


def test_gradients_reach_every_parameter() -> None:
    layer = CoCConv2d(3, 8, 3, padding=1, bias=True, sl=2, stnd=True, ln_super=True, ln_kernel=True)
    layer(torch.randn(2, 3, 6, 6)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sa=0), "sa=0"), (dict(sa=-1), "sa=-1"), (dict(sa=1.5), "sa=1.5"),
        (dict(skp=3), "skp=3"), (dict(skp=-2), "skp=-2"), (dict(sl=0), "sl=0"),
        (dict(kernel_size=1), "odd and >= 3"), (dict(kernel_size=4), "odd and >= 3"),
        (dict(skp=0, dilate=True), "dilate=True needs skp > 0"),
        (dict(kernel_size=9), "supports kernel sizes 3, 5, 7"), (dict(skp=8), "skp in 2, 4, 6"),
        (dict(groups=3), "divisible by groups"), (dict(padding="same"), "string padding"),
    ],
)
def test_bad_hyper_parameters_raise_value_error(kwargs: dict, match: str) -> None:
    args = dict(in_channels=4, out_channels=8, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        CoCConv2d(**args)
