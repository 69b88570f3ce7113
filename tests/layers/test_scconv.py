"""SCConv / SCBottleneck (SCNet Sec. 3.1): reference structure and keys, exact Conv+BN folds."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deploy.layers.scconv import SCBottleneck, SCConv
from tests.helpers import randomise_bn

FOLD_SETTINGS = settings(max_examples=25, deadline=None)
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def _check_fold(module: nn.Module, x: torch.Tensor, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    module = module.to(x.dtype)
    randomise_bn(module, gen)
    module.eval()
    with torch.no_grad():
        y = module(x)
        module.switch_to_deploy()
        module.switch_to_deploy()  # idempotent
        y_dep = module(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    err = (y - y_dep).abs().max().item()
    assert err <= TOL[x.dtype] * y.abs().max().item()
    return err


@st.composite
def scconv_cases(draw):
    groups = draw(st.sampled_from([1, 2]))
    planes = groups * draw(st.integers(1, 8))
    r = draw(st.sampled_from([1, 2, 4]))
    dilation = draw(st.sampled_from([1, 2]))
    size = draw(st.integers(max(r, 2 * dilation), 16))
    return dict(inplanes=planes, planes=planes, stride=draw(st.sampled_from([1, 2])), padding=dilation,
                dilation=dilation, groups=groups, pooling_r=r,
                interpolation=draw(st.sampled_from(["nearest", "bilinear"]))), size


@FOLD_SETTINGS
@given(scconv_cases(), st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31 - 1))
def test_scconv_fold_is_exact(case, dtype, seed):
    kwargs, size = case
    torch.manual_seed(seed)
    x = torch.randn(2, kwargs["planes"], size, size, dtype=dtype)
    m = SCConv(**kwargs)
    _check_fold(m, x, seed)
    keys = set(m.state_dict())
    assert {"k2.1.weight", "k2.1.bias", "k3.0.weight", "k3.0.bias", "k4.0.weight", "k4.0.bias"} == keys


@FOLD_SETTINGS
@given(
    st.sampled_from([4, 8, 16]), st.integers(1, 2), st.booleans(), st.sampled_from(["nearest", "bilinear"]),
    st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31 - 1),
)
def test_scbottleneck_fold_is_exact(planes, stride, avd, interpolation, dtype, seed):
    torch.manual_seed(seed)
    inplanes = 8
    downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                               nn.BatchNorm2d(planes * 4))
    block = SCBottleneck(inplanes, planes, stride, downsample, avd=avd, interpolation=interpolation)
    x = torch.randn(2, inplanes, 16, 16, dtype=dtype)
    _check_fold(block, x, seed)
    assert isinstance(block.downsample[1], nn.Identity) and block.downsample[0].bias is not None


# Keys of MCG-NKU/SCNet scnet.py SCBottleneck (with a downsample), module by module.
_REFERENCE_KEYS = {
    "conv1_a": ["weight"], "bn1_a": "bn", "conv1_b": ["weight"], "bn1_b": "bn",
    "k1.0": ["weight"], "k1.1": "bn",
    "scconv.k2.1": ["weight"], "scconv.k2.2": "bn",
    "scconv.k3.0": ["weight"], "scconv.k3.1": "bn",
    "scconv.k4.0": ["weight"], "scconv.k4.1": "bn",
    "conv3": ["weight"], "bn3": "bn", "downsample.0": ["weight"], "downsample.1": "bn",
}
_BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def test_scbottleneck_state_dict_keys_are_the_references():
    ds = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256))
    block = SCBottleneck(64, 64, 1, ds)
    expected = {f"{mod}.{p}" for mod, ps in _REFERENCE_KEYS.items() for p in (_BN if ps == "bn" else ps)}
    assert set(block.state_dict()) == expected
    sd = block.state_dict()
    assert sd["conv1_a.weight"].shape == (32, 64, 1, 1)  # group_width = planes/2
    assert sd["k1.0.weight"].shape == (32, 32, 3, 3)
    assert sd["scconv.k2.1.weight"].shape == (32, 32, 3, 3)
    assert sd["conv3.weight"].shape == (256, 64, 1, 1)
    block.eval().switch_to_deploy()
    deployed = set(block.state_dict())
    assert deployed == {f"{mod}.{p}" for mod, ps in _REFERENCE_KEYS.items() if ps != "bn" for p in ("weight", "bias")}


def test_scbottleneck_params_are_resnet_bottleneck_plus_two_bn_per_width():
    """Same convs as a ResNet bottleneck of width w; the split adds 2 BNs of w/2 channels."""
    inplanes, planes = 256, 64
    w = planes
    plain = inplanes * w + 9 * w * w + w * 4 * planes + 2 * (w + w + 4 * planes)
    assert _count(SCBottleneck(inplanes, planes)) == plain + 2 * w


@pytest.mark.parametrize("layers, digits, target_m", [([3, 4, 6, 3], 2, 25.56), ([3, 4, 23, 3], 1, 44.6)])
def test_scnet_has_the_papers_parameter_count(layers, digits, target_m):
    """SCNet-50 25.56 M (25.6 M in Table 1), SCNet-101 44.6 M; built on the meta device."""
    total = 3 * 64 * 49 + 2 * 64 + 2048 * 1000 + 1000  # stem conv + bn, fc
    inplanes = 64
    with torch.device("meta"):
        for stage, blocks in enumerate(layers):
            planes = 64 * 2**stage
            for i in range(blocks):
                ds = None
                if i == 0:
                    ds = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))
                total += _count(SCBottleneck(inplanes, planes, 2 if i == 0 and stage else 1, ds))
                inplanes = planes * 4
    assert round(total / 1e6, digits) == target_m


def test_nearest_mode_is_the_reference_upsampling():
    """Default: F.interpolate's default mode (nearest) -- each pooled cell covers an r×r patch."""
    torch.manual_seed(0)
    m = SCConv(3, 3, pooling_r=4).eval()
    x = torch.randn(1, 3, 8, 8)
    ref = m.k2(x).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    expected = m.k4(m.k3(x) * torch.sigmoid(x + ref))
    torch.testing.assert_close(m(x), expected)


def test_bilinear_mode_uses_half_pixel_alignment():
    torch.manual_seed(0)
    m = SCConv(3, 3, pooling_r=2, interpolation="bilinear").eval()
    x = torch.randn(1, 3, 8, 8)
    up = F.interpolate(m.k2(x), size=(8, 8), mode="bilinear", align_corners=False)
    expected = m.k4(m.k3(x) * torch.sigmoid(x + up))
    torch.testing.assert_close(m(x), expected)
    nearest = copy.deepcopy(m)
    nearest.interpolation = "nearest"
    assert (nearest(x) - m(x)).abs().max() > 1e-3  # the mode really changes the output


def test_construction_errors():
    with pytest.raises(ValueError, match="interpolation"):
        SCConv(4, 4, interpolation="bicubic")
    with pytest.raises(ValueError, match="inplanes == planes"):
        SCConv(4, 8)
    with pytest.raises(ValueError, match="smaller than pooling_r=4"):
        SCConv(4, 4)(torch.randn(1, 4, 3, 8))
