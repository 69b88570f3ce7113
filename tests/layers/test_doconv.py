"""DO-Conv (paper 001, Sec. 3 Eq. 3-4, init Sec. 4): fold exactness, reference layout, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deploy.layers.doconv import DOConv2d
from deploy.models.zoo import build_model

FAST = settings(max_examples=30, deadline=None)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def configs(draw: st.DrawFn) -> dict:
    """Random DOConv2d hyper-parameters plus an input size that fits them (<= 12 x 12)."""
    groups = draw(st.integers(1, 4))
    in_c = groups * draw(st.integers(1, 16 // groups))
    out_c = groups * draw(st.integers(1, 16 // groups))
    if draw(st.booleans()):  # depthwise (DO-DConv) half the time it is possible
        groups, in_c = in_c, in_c
        out_c = in_c * draw(st.integers(1, max(1, 16 // in_c)))
    kh = draw(st.sampled_from([1, 3, 5, 7]))
    kw = draw(st.sampled_from([kh, kh, 1, 3, 5]))
    dil = draw(st.sampled_from([1, 2]))
    stride = draw(st.sampled_from([1, 2]))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    eff = [dil * (k - 1) + 1 for k in (kh, kw)]
    pad = [draw(st.integers(max(0, (e - 11) // 2), (e - 1) // 2 + 1)) for e in eff]
    size = [draw(st.integers(max(e - 2 * p, p + 1, 1), 12)) for e, p in zip(eff, pad)]
    mn = kh * kw
    d_mul = None if draw(st.booleans()) else mn + draw(st.integers(0, 5))
    return dict(
        layer=dict(in_channels=in_c, out_channels=out_c, kernel_size=(kh, kw), D_mul=d_mul, stride=stride,
                   padding=tuple(pad), dilation=dil, groups=groups, bias=draw(st.booleans()), padding_mode=mode),
        size=tuple(size), seed=draw(st.integers(0, 2**16)),
    )


def _randomized(cfg: dict, dtype: torch.dtype) -> DOConv2d:
    """A layer whose W, D and bias are all random (D is zero at init; that would hide bugs)."""
    torch.manual_seed(cfg["seed"])
    layer = DOConv2d(**cfg["layer"]).to(dtype)
    with torch.no_grad():
        if layer.D is not None:
            layer.D.normal_(0.0, 0.3)
        if layer.bias is not None:
            layer.bias.normal_()
    return layer.eval()


def reference_kernel(W: torch.Tensor, D: torch.Tensor,  # noqa: N803 - the reference's names
                      d_diag: torch.Tensor, groups: int, kernel_size) -> torch.Tensor:
    """The reference's einsum + raw reshape, spelled out: filter o, input j use D[(o*in/g + j) mod in]."""
    out_c, ipg, d_mul = W.shape
    in_c = D.shape[0]
    o = torch.arange(out_c).reshape(-1, 1)
    j = torch.arange(ipg).reshape(1, -1)
    d_sel = (D + d_diag)[(o * ipg + j) % in_c]  # (out, in/g, M*N, D_mul)
    k = torch.einsum("ojms,ojs->ojm", d_sel, W)
    return k.reshape(out_c, ipg, *kernel_size)


def feature_composition(layer: DOConv2d, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3 first form, O = W * (D o P): depthwise conv by D, then a (grouped) 1x1 conv by W."""
    m, n = layer.kernel_size
    in_c, d_mul = layer.in_channels, layer.D_mul
    pad_mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    ph, pw = layer.padding
    xp = F.pad(x, (pw, pw, ph, ph), mode=pad_mode)
    if layer.D is None:
        dw = xp
        w = layer.W.reshape(layer.out_channels, -1, 1, 1)
        if layer.stride != (1, 1):
            dw = dw[:, :, :: layer.stride[0], :: layer.stride[1]]
        return F.conv2d(dw, w, layer.bias, groups=layer.groups)
    d_full = (layer.D + layer.d_diag).permute(0, 2, 1).reshape(in_c * d_mul, 1, m, n)
    p_prime = F.conv2d(xp, d_full, None, layer.stride, 0, layer.dilation, groups=in_c)
    w = layer.W.reshape(layer.out_channels, (in_c // layer.groups) * d_mul, 1, 1)
    return F.conv2d(p_prime, w, layer.bias, groups=layer.groups)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@FAST
@given(cfg=configs())
def test_fold_equals_layer_float32_and_float64(cfg: dict) -> None:
    for dtype, check in ((torch.float32, lambda e, y: e <= 1e-5 * y), (torch.float64, lambda e, y: e <= 1e-10)):
        layer = _randomized(cfg, dtype)
        x = torch.randn(2, layer.in_channels, *cfg["size"], dtype=dtype)
        with torch.no_grad():
            y = layer(x)
            conv = layer.to_conv2d()
            y_fold = conv(x)
        assert type(conv) is nn.Conv2d and conv.padding_mode == layer.padding_mode
        assert conv.weight.dtype == dtype and (conv.bias is None) == (layer.bias is None)
        err = (y_fold - y).abs().max().item()
        assert check(err, y.abs().max().item()), (dtype, err)


@FAST
@given(cfg=configs())
def test_layer_matches_independent_formulas_float64(cfg: dict) -> None:
    """Kernel = the reference index formula; output = Eq. 3 feature composition where the two agree."""
    layer = _randomized(cfg, torch.float64)
    x = torch.randn(2, layer.in_channels, *cfg["size"], dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        k = layer.composite_kernel()
        if layer.D is not None:
            expected = reference_kernel(layer.W, layer.D, layer.d_diag, layer.groups, layer.kernel_size)
            assert (k - expected).abs().max().item() <= 1e-12
        if layer.groups == 1 or layer.out_channels == layer.groups:
            # groups == 1 (DO-Conv) or one filter per group (DO-DConv with multiplier 1): no quirk
            assert (feature_composition(layer, x) - y).abs().max().item() <= 1e-10


@FAST
@given(cfg=configs())
def test_switch_to_deploy_idempotent_with_plain_conv_keys(cfg: dict) -> None:
    layer = _randomized(cfg, torch.float64)
    x = torch.randn(1, layer.in_channels, *cfg["size"], dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        layer.switch_to_deploy()
        y1 = layer(x)
        sd1 = {k: v.clone() for k, v in layer.state_dict().items()}
        layer.switch_to_deploy()
        y2 = layer(x)
    plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, bias=layer.bias is not None,
                      groups=layer.groups)
    assert list(layer.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(sd1[k], v) for k, v in layer.state_dict().items())
    assert (y1 - y).abs().max().item() <= 1e-10 and torch.equal(y1, y2)
    assert not hasattr(layer, "W") and not hasattr(layer, "D") and not hasattr(layer, "d_diag")
    plain.load_state_dict(layer.state_dict(), strict=True)  # and the deployed dict loads into nn.Conv2d
    assert torch.equal(layer.to_conv2d().weight, layer.weight)


@pytest.mark.parametrize(
    "in_c,out_c,k,groups,d_mul",
    [(4, 6, 3, 2, None), (6, 6, 3, 6, None), (4, 8, 3, 4, 11), (6, 9, (3, 5), 3, 16), (8, 4, 5, 2, None)],
)
def test_reference_checkpoint_loads_and_computes_reference_formula(in_c, out_c, k, groups, d_mul) -> None:
    """A state_dict written with the reference names/shapes loads strictly and reproduces its quirk."""
    kh, kw = (k, k) if isinstance(k, int) else k
    mn = kh * kw
    dm = mn if d_mul is None else d_mul
    g = torch.Generator().manual_seed(7)
    # d_diag as the reference builds it: eye(M*N) tiled D_mul // (M*N) times, zero columns after
    eye_blocks = torch.eye(mn).reshape(1, mn, mn).repeat(in_c, 1, dm // mn)
    d_diag = torch.cat([eye_blocks, torch.zeros(in_c, mn, dm % mn)], dim=2)
    ckpt = {
        "W": torch.randn(out_c, in_c // groups, dm, generator=g),
        "D": 0.3 * torch.randn(in_c, mn, dm, generator=g),
        "d_diag": d_diag,
        "bias": torch.randn(out_c, generator=g),
    }
    layer = DOConv2d(in_c, out_c, k, D_mul=d_mul, padding=1, groups=groups, bias=True)
    assert torch.equal(layer.d_diag, d_diag) and not layer.d_diag.requires_grad
    layer.load_state_dict(ckpt, strict=True)
    x = torch.randn(2, in_c, 9, 10, generator=g)
    # independent computation: explicit loops over filters and their inputs
    ipg = in_c // groups
    kernel = torch.empty(out_c, ipg, kh, kw)
    for o in range(out_c):
        for j in range(ipg):
            d = ckpt["D"][(o * ipg + j) % in_c] + d_diag[(o * ipg + j) % in_c]  # (M*N, D_mul)
            kernel[o, j] = (d @ ckpt["W"][o, j]).reshape(kh, kw)
    expected = F.conv2d(x, kernel, ckpt["bias"], padding=1, groups=groups)
    with torch.no_grad():
        got = layer(x)
        folded = layer.to_conv2d()(x)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-5 * scale
    assert (folded - expected).abs().max().item() <= 1e-5 * scale
    if out_c > groups > 1:  # several filters per group: the quirk really differs from the paper's pairing
        opg = out_c // groups
        paper = torch.empty_like(kernel)
        for o in range(out_c):
            for j in range(ipg):
                c = (o // opg) * ipg + j  # the input channel filter o actually reads
                paper[o, j] = ((ckpt["D"][c] + d_diag[c]) @ ckpt["W"][o, j]).reshape(kh, kw)
        assert (paper - kernel).abs().max().item() > 1e-3


def test_init_follows_paper_sec4() -> None:
    """D zero, d_diag identity-tiled and frozen, W like nn.Conv2d, so W' = W at init (D_mul = M*N)."""
    torch.manual_seed(0)
    layer = DOConv2d(8, 16, 3, bias=True)
    assert torch.count_nonzero(layer.D) == 0 and layer.D.requires_grad
    assert not layer.d_diag.requires_grad and "d_diag" in layer.state_dict()
    assert torch.equal(layer.composite_kernel(), layer.W.reshape(16, 8, 3, 3))
    bound = 1 / math.sqrt(8 * 9)
    assert layer.W.abs().max().item() <= bound and layer.W.abs().max().item() > 0.9 * bound
    assert layer.bias.abs().max().item() <= bound
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == 16 * 8 * 9 + 8 * 9 * 9 + 16
    wide = DOConv2d(2, 3, 3, D_mul=20)  # 20 = 2 * 9 + 2: two identity blocks then two zero columns
    assert torch.equal(wide.d_diag[0, :, :9], torch.eye(9)) and torch.equal(wide.d_diag[0, :, 9:18], torch.eye(9))
    assert torch.count_nonzero(wide.d_diag[:, :, 18:]) == 0
    w = wide.W
    assert torch.allclose(wide.composite_kernel(), (w[:, :, :9] + w[:, :, 9:18]).reshape(3, 2, 3, 3))


def test_pointwise_has_no_d_and_backprop_reaches_d() -> None:
    one = DOConv2d(4, 5, 1, D_mul=7, bias=False)
    assert set(one.state_dict()) == {"W"} and one.D_mul == 1 and one.W.shape == (5, 4, 1)
    layer = DOConv2d(3, 4, 3, padding=1)
    layer(torch.randn(2, 3, 6, 6)).square().sum().backward()
    assert layer.D.grad is not None and layer.D.grad.abs().sum() > 0 and layer.d_diag.grad is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=4, out_channels=4, kernel_size=3, D_mul=8), "D_mul=8 must be >= M\\*N=9"),
        (dict(in_channels=4, out_channels=4, kernel_size=(3, 5), D_mul=14), "M\\*N=15"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, D_mul=9.5), "must be an integer"),
        (dict(in_channels=4, out_channels=6, kernel_size=3, groups=4), "divisible by groups"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, padding_mode="mirror"), "padding_mode"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, padding="same"), "string padding"),
        (dict(in_channels=4, out_channels=4, kernel_size=0), "kernel_size"),
        (dict(in_channels=4, out_channels=4, kernel_size=3, stride=0), "stride"),
        (dict(in_channels=0, out_channels=4, kernel_size=3), "must all be >= 1"),
    ],
)
def test_bad_hyper_parameters_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DOConv2d(**kwargs)


@pytest.mark.parametrize(
    "groups,out_c,k,mode,d_mul",
    [(1, 5, 3, "zeros", None), (1, 3, (3, 5), "reflect", 17), (1, 4, 7, "circular", None),
     (6, 6, 3, "replicate", 12), (6, 6, 5, "zeros", None)],
)
def test_kernel_composition_equals_feature_composition(groups, out_c, k, mode, d_mul) -> None:
    """Eq. 3 (DO-Conv) / Eq. 4 (DO-DConv): both ways of computing the layer agree, with random D."""
    cfg = dict(layer=dict(in_channels=6, out_channels=out_c, kernel_size=k, D_mul=d_mul, stride=2, padding=2,
                          dilation=2, groups=groups, bias=True, padding_mode=mode), seed=3)
    layer = _randomized(cfg, torch.float64)
    x = torch.randn(2, 6, 11, 12, dtype=torch.float64)
    with torch.no_grad():
        assert (feature_composition(layer, x) - layer(x)).abs().max().item() <= 1e-10


def test_defaults_match_the_reference_layer_and_load_its_state_dict() -> None:
    """``DOConv2d(16, 32, 3, padding=1)`` has a bias like nn.Conv2d and the reference layer, so a state_dict
    with the reference's keys (W, D, d_diag, bias) and shapes loads strictly and computes W' * x + bias."""
    layer = DOConv2d(16, 32, 3, padding=1)
    assert layer.bias is not None and nn.Conv2d(16, 32, 3, padding=1).bias is not None
    gen = torch.Generator().manual_seed(0)
    reference = {"W": torch.randn(32, 16, 9, generator=gen), "D": 0.1 * torch.randn(16, 9, 9, generator=gen),
                 "d_diag": torch.eye(9).repeat(16, 1, 1), "bias": torch.randn(32, generator=gen)}
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {k: tuple(v.shape) for k, v in reference.items()}
    layer.load_state_dict(reference, strict=True)
    kernel = torch.einsum("ims,ois->oim", reference["D"] + reference["d_diag"], reference["W"]).reshape(32, 16, 3, 3)
    x = torch.randn(2, 16, 8, 8, generator=gen)
    with torch.no_grad():
        expected = F.conv2d(x, kernel, reference["bias"], padding=1)
        assert torch.allclose(layer(x), expected, atol=1e-5) and torch.allclose(layer.to_conv2d()(x), expected, atol=1e-5)
    zoo = build_model("resnet20", "doconv")
    assert all(m.bias is None for m in zoo.modules() if isinstance(m, DOConv2d))  # a BN follows every one
