"""The exact deploy rewrites (deploy.layers.*, deploy.fold.rewrite): property tests of every identity.

Each rewrite is compared with the training form it replaces over random channels, strides,
ratios, sizes and BatchNorm statistics, zero and negative BN scales included: at most 1e-10
apart in float64 and 1e-5 * max|y| in float32. Then the passes of ``fold_model``: which
layers they rewrite, which they leave alone, and the report rows they add.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from deploy.fold.fold import fold_model
from deploy.layers.ic import ICConv2d, ICConvBN
from deploy.layers.rewrite_blocks import ChannelScale, SplitConv2d
from deploy.layers.scconv import SCBottleneck, SCConv, SCConvStatic, nearest_rows, upsample_static
from deploy.layers.spconv import SPConv3x3, SPConvBN
from tests.helpers import randomise_bn

PROPERTY = settings(max_examples=20, deadline=None)
F64_ABS = 1e-10
F32_REL = 1e-5
SCALES = ["positive", "negative", "mixed", "zeros"]


def bn_with_scales(channels: int, kind: str, seed: int, dtype: torch.dtype) -> nn.BatchNorm2d:
    """An eval BatchNorm with random statistics whose scales gamma/std are all positive, all
    negative, of mixed sign, or of mixed sign with some exactly zero."""
    gen = torch.Generator().manual_seed(seed)
    bn = randomise_bn(nn.BatchNorm2d(channels).to(dtype), gen)
    with torch.no_grad():
        magnitude = bn.weight.abs() + 0.1
        sign = {"positive": 1.0, "negative": -1.0}.get(kind)
        if sign is not None:
            bn.weight.copy_(sign * magnitude)
        else:
            bn.weight.copy_(magnitude * torch.where(torch.rand(channels, generator=gen) < 0.5, -1.0, 1.0).to(dtype))
            if kind == "zeros":
                bn.weight[:: 2] = 0.0
    return bn


def worst_errors(reference: nn.Module, rewritten: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max|y|) of ``rewritten`` against ``reference`` on ``x``."""
    with torch.no_grad():
        y = reference(x)
        return float((rewritten(x) - y).abs().max()), float(y.abs().max())


def check(reference: nn.Module, rewritten: nn.Module, x: torch.Tensor) -> None:
    err, scale = worst_errors(reference, rewritten, x)
    if x.dtype == torch.float64:
        assert err <= F64_ABS, (err, scale)
    else:
        assert err <= F32_REL * scale, (err, scale)


def both_dtypes(build, x64: torch.Tensor) -> None:
    """``build(dtype) -> (reference, rewritten)`` checked in float64 and in float32."""
    for dtype in (torch.float64, torch.float32):
        reference, rewritten = build(dtype)
        check(reference, rewritten, x64.to(dtype))


# ---------------------------------------------------------------- SPConv (+ the BN after it)


@st.composite
def sp_cases(draw):
    cin = 2 * draw(st.integers(2, 12))
    cout = 2 * draw(st.integers(1, 12))
    ratio = draw(st.sampled_from([1 / 2, 1 / 4, 1 / 8, 3 / 4]))
    rep = int(cin * ratio)
    assume(rep > 0 and rep % 2 == 0 and cin - rep > 0)
    stride = draw(st.sampled_from([1, 2]))
    size = 2 * draw(st.integers(1, 5)) if stride == 2 else draw(st.integers(1, 9))
    return cin, cout, ratio, stride, size


def _spconv(cin: int, cout: int, ratio: float, stride: int, seed: int, dtype: torch.dtype) -> SPConv3x3:
    torch.manual_seed(seed)
    return randomise_bn(SPConv3x3(cin, cout, stride, ratio).to(dtype), torch.Generator().manual_seed(seed))


@PROPERTY
@given(sp_cases(), st.sampled_from(SCALES), st.booleans(), st.integers(0, 2**31 - 1))
def test_spconv_absorbs_the_bn_after_it(case, scales, deployed_first, seed):
    cin, cout, ratio, stride, size = case
    x = torch.randn(2, cin, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    def build(dtype):
        sp = _spconv(cin, cout, ratio, stride, seed, dtype)
        bn = bn_with_scales(cout, scales, seed + 1, dtype)
        reference = nn.Sequential(sp, bn).eval()
        if deployed_first:
            sp.switch_to_deploy()
        return reference, sp.absorb_batchnorm(bn)

    both_dtypes(build, x)
    rep = int(cin * ratio)
    reference, rewritten = build(torch.float64)
    # the pieces a split producer hands over are the same slices
    check(reference, lambda t: rewritten((t[:, :rep], t[:, rep:])), x)  # type: ignore[arg-type]


@PROPERTY
@given(sp_cases(), st.integers(0, 2**31 - 1))
def test_spconv_rewritten_alone(case, seed):
    cin, cout, ratio, stride, size = case
    x = torch.randn(2, cin, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    def build(dtype):
        sp = _spconv(cin, cout, ratio, stride, seed, dtype).eval()
        return sp, sp.rewritten()

    both_dtypes(build, x)


def test_spconv_rewrite_structure():
    """What the graph is made of: D from convs accumulating into each other, no softmax, the
    zero-scale channel's divisor 0 (not 1/0), and the input untouched."""
    sp = _spconv(8, 6, 0.5, 1, 0, torch.float64).eval()
    bn = bn_with_scales(6, "zeros", 1, torch.float64)
    before = {k: v.clone() for k, v in sp.state_dict().items()}
    new = sp.absorb_batchnorm(bn)
    assert isinstance(new, SPConvBN) and new.input_split == sp.input_split == (4, 4)
    assert isinstance(new.inv_scale, ChannelScale) and isinstance(new.negate, ChannelScale)
    inverse = new.inv_scale.weight.flatten()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.all(inverse[scale == 0] == 0) and torch.allclose(inverse[scale != 0], 1 / scale[scale != 0])
    assert all(torch.equal(before[k], v) for k, v in sp.state_dict().items())  # absorb copies, never edits
    assert not sp.deployed and isinstance(sp.bn1, nn.BatchNorm2d)


# ---------------------------------------------------------------- IC (+ the BN after it)


@st.composite
def ic_cases(draw):
    cin, cout = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    k = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.integers(0, k // 2 + 1))  # beyond k // 2 the window stays a convolution
    dilation = draw(st.sampled_from([1, 1, 2]))
    alpha = draw(st.sampled_from([1.0, 0.0, 0.03, -0.7, 2.5]))
    bias = draw(st.booleans())
    size = draw(st.integers(max(1, (k - 1) * dilation + 1 - 2 * padding), 10))
    return cin, cout, k, stride, padding, dilation, alpha, bias, size


def _ic(case, seed: int, dtype: torch.dtype) -> ICConv2d:
    cin, cout, k, stride, padding, dilation, alpha, bias, _ = case
    torch.manual_seed(seed)
    ic = ICConv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias, alpha=alpha)
    with torch.no_grad():  # b1 starts at zero and W' at a small init: make both matter
        ic.b1.normal_()
        ic.adjust.weight.normal_()
    return ic.to(dtype).eval()


@PROPERTY
@given(ic_cases(), st.sampled_from(SCALES), st.booleans(), st.integers(0, 2**31 - 1))
def test_ic_absorbs_the_bn_after_it(case, scales, deployed_first, seed):
    x = torch.randn(2, case[0], case[-1], case[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    def build(dtype):
        ic = _ic(case, seed, dtype)
        bn = bn_with_scales(case[1], scales, seed + 1, dtype)
        reference = nn.Sequential(ic, bn).eval()
        if deployed_first:
            ic.switch_to_deploy()
        return reference, ic.absorb_batchnorm(bn)

    both_dtypes(build, x)


@PROPERTY
@given(ic_cases(), st.integers(0, 2**31 - 1))
def test_ic_rewritten_alone(case, seed):
    x = torch.randn(2, case[0], case[-1], case[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    def build(dtype):
        ic = _ic(case, seed, dtype)
        return ic, ic.rewritten()

    both_dtypes(build, x)


@pytest.mark.parametrize("scales", ["positive", "mixed"])
def test_ic_rewrite_structure(scales):
    """Window sum as a padded average pooling scaled into W', the sign term only where some s < 0,
    and alpha = 0 leaving the convolution alone."""
    ic = _ic((4, 6, 3, 1, 1, 1, 0.5, True, 8), 0, torch.float64)
    new = ic.absorb_batchnorm(bn_with_scales(6, scales, 1, torch.float64))
    assert isinstance(new, ICConvBN) and isinstance(new.window, nn.AvgPool2d) and new.window.count_include_pad
    assert (new.linear is None) == (scales == "positive")
    dilated = _ic((4, 6, 3, 1, 2, 2, 0.5, True, 8), 0, torch.float64).rewritten()
    assert isinstance(dilated, ICConvBN) and isinstance(dilated.window, nn.Conv2d)  # pooling has no dilation
    assert type(_ic((4, 6, 3, 1, 1, 1, 0.0, True, 8), 0, torch.float64).rewritten()) is nn.Conv2d


# ---------------------------------------------------------------- SCNet


@st.composite
def sc_cases(draw):
    channels = draw(st.sampled_from([4, 8]))
    stride = draw(st.sampled_from([1, 2]))
    r = draw(st.sampled_from([2, 3, 4]))
    h, w = draw(st.integers(r, 17)), draw(st.integers(r, 17))
    return channels, stride, r, h, w, draw(st.sampled_from(["nearest", "bilinear"]))


@PROPERTY
@given(sc_cases(), st.integers(0, 2**31 - 1))
def test_scconv_rewritten(case, seed):
    channels, stride, r, h, w, interpolation = case
    x = torch.randn(2, channels, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    def build(dtype):
        torch.manual_seed(seed)
        conv = SCConv(channels, channels, stride=stride, pooling_r=r, interpolation=interpolation)
        conv = randomise_bn(conv.to(dtype), torch.Generator().manual_seed(seed))
        return conv, conv.rewritten()

    both_dtypes(build, x)


def test_scnet_bottleneck_fold_rewrites_its_scconv():
    """In a folded SCNet bottleneck the SCConv is rewritten; the Concat and conv3 stay (the split
    conv3 measured slower, deploy/layers/scconv.py)."""
    block = randomise_bn(SCBottleneck(64, 16, 1).double(), torch.Generator().manual_seed(4))
    folded, report = fold_model(block, probe_shape=(64, 14, 14))
    assert [(r.name, r.detail) for r in report.rewrites] == [("scconv", "SCConv -> SCConvStatic")]
    assert isinstance(folded.scconv, SCConvStatic) and isinstance(folded.conv3, nn.Conv2d)
    check(block, folded, torch.randn(2, 64, 14, 14, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 40), st.sampled_from([torch.float32, torch.float64]))
def test_static_upsampling_is_torch_nearest(p, h, w, dtype):
    """Integer factor, broadcast or gathered rows: bit for bit what F.interpolate(size=...) gives."""
    q = max(1, w // 4)
    assume(h >= p)
    ref = torch.randn(2, 3, p, q, dtype=dtype)
    expected = torch.nn.functional.interpolate(ref, size=(h, w), mode="nearest")
    assert torch.equal(upsample_static(ref, h, w).expand_as(expected), expected)


def test_nearest_rows_refuses_where_torch_rounds_otherwise():
    """torch's float32 ratio picks other rows than floor(i * in / out) for 24 -> 74: no gather there."""
    assert nearest_rows(24, 74) is None
    assert nearest_rows(3, 14) == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2]


# ---------------------------------------------------------------- the passes of fold_model


class Halves(nn.Module):
    """A layer that slices its input into 3 + 5 channels (any layer with ``input_split``)."""

    input_split = (3, 5)

    def forward(self, x):
        a, b = x if isinstance(x, tuple) else (x[:, :3], x[:, 3:])
        return a.mean(1, keepdim=True) * b


class Block(nn.Module):
    """conv -> BN -> ReLU -> Halves, optionally with the ReLU output also used by a residual."""

    def __init__(self, residual: bool = False, groups: int = 1, functional_relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.halves = Halves()
        self.residual, self.functional_relu = residual, functional_relu

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = torch.relu(y) if self.functional_relu else self.relu(y)
        out = self.halves(y)
        return out + y[:, 3:] if self.residual else out


def _net(**block) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), Block(**block), nn.Conv2d(5, 4, 1))
    return randomise_bn(net, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("functional_relu", [False, True])
def test_producer_split_replaces_the_slices(functional_relu):
    net = _net(functional_relu=functional_relu)
    folded, report = fold_model(net, probe_shape=(3, 6, 6))
    split = [r for r in report.rewrites if "split" in r.detail]
    assert [r.name for r in split] == ["1.conv"] and split[0].max_abs_error < 1e-12
    assert isinstance(folded[1], torch.fx.GraphModule) and isinstance(folded[1].conv, SplitConv2d)
    assert folded[1].conv.sizes == (3, 5) and folded[1].conv.relu
    assert not any(n.op == "call_module" and n.target == "relu" for n in folded[1].graph.nodes)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(net(x), folded(x), atol=1e-5)


@pytest.mark.parametrize("block", [{"residual": True}, {"groups": 2}], ids=["output-used-twice", "grouped"])
def test_producer_split_only_where_exact(block):
    folded, report = fold_model(_net(**block), probe_shape=(3, 6, 6))
    assert not report.rewrites and not isinstance(folded[1], torch.fx.GraphModule)
    assert any(k.startswith("1.halves: its input is sliced") for k in report.kept)


def test_fold_rewrite_switch_and_report_rows():
    """rewrite=False keeps the BN after SPConv (reported as kept); rewrite=True absorbs it in a
    float64-measured row of kind 'rewrite'."""
    net = randomise_bn(nn.Sequential(nn.Conv2d(3, 8, 1), SPConv3x3(8, 8, 1, 0.5), nn.BatchNorm2d(8)),
                       torch.Generator().manual_seed(1))
    plain, plain_report = fold_model(net, probe_shape=(3, 6, 6), rewrite=False)
    assert not plain_report.rewrites and isinstance(plain[2], nn.BatchNorm2d)
    assert any(k.startswith("2: BatchNorm2d kept") for k in plain_report.kept)
    folded, report = fold_model(net, probe_shape=(3, 6, 6))
    (row,) = [r for r in report.rewrites if r.name == "1"]
    assert row.kind == "rewrite" and "SPConv3x3+BatchNorm2d (2) -> SPConvBN" == row.detail
    assert row.max_rel_error < 1e-12 and isinstance(folded[1], SPConvBN) and isinstance(folded[2], nn.Identity)
    assert report.to_dict()["rows"][-1]["detail"]  # the JSON carries the detail
