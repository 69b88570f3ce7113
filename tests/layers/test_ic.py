"""ICConv2d (IC Networks Eq. 3/6/7): forward = the paper's formula, exact deploy form, param counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deploy.layers.ic import ICConv2d

FOLD_SETTINGS = settings(max_examples=25, deadline=None)
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


@st.composite
def ic_cases(draw):
    cin, cout = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    k = draw(st.sampled_from([1, 3, 5]))
    dilation = draw(st.sampled_from([1, 2]))
    padding = draw(st.integers(0, 2))
    stride = draw(st.sampled_from([1, 2]))
    reach = dilation * (k - 1) + 1
    size = draw(st.integers(max(reach - 2 * padding, 1), 16))
    layer = dict(in_channels=cin, out_channels=cout, kernel_size=k, stride=stride, padding=padding,
                 dilation=dilation, bias=draw(st.booleans()), alpha=draw(st.floats(-1.0, 2.0)),
                 learn_alpha=draw(st.booleans()))
    return layer, size, draw(st.sampled_from([torch.float32, torch.float64])), draw(st.integers(0, 2**31 - 1))


def _randomised(layer_kwargs: dict, dtype: torch.dtype, seed: int) -> ICConv2d:
    torch.manual_seed(seed)
    m = ICConv2d(**layer_kwargs).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad and p.dim() <= 1:  # b1, b2 (zero / small by default)
                p.normal_()
    return m.eval()


def _reference_formula(m: ICConv2d, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3/6/7 computed independently: window sums by unfold, W' by einsum."""
    c = m.conv
    wx = F.conv2d(x, c.weight, None, c.stride, c.padding, c.dilation)
    cols = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)  # (N, C_in*k*k, L)
    n, cin = x.shape[:2]
    sums = cols.view(n, cin, -1, cols.shape[-1]).sum(2).view(n, cin, *wx.shape[-2:])
    adjusted = torch.einsum("oi,nihw->nohw", m.adjust.weight[:, :, 0, 0], sums)
    out = wx + m.alpha * torch.relu(wx - adjusted + m.b1.view(1, -1, 1, 1))
    if m.bias is not None:
        out = out + m.bias.view(1, -1, 1, 1)
    return out


@FOLD_SETTINGS
@given(ic_cases())
def test_forward_is_eq6_and_deploy_form_is_exact(case):
    layer, size, dtype, seed = case
    m = _randomised(layer, dtype, seed)
    x = torch.randn(2, layer["in_channels"], size, size, dtype=dtype)
    with torch.no_grad():
        y = m(x)
        ref = _reference_formula(m, x)
        scale = max(y.abs().max().item(), 1e-30)
        assert (y - ref).abs().max().item() <= TOL[dtype] * scale
        m.switch_to_deploy()
        m.switch_to_deploy()  # idempotent
        y_dep = m(x)
    assert (y_dep - y).abs().max().item() <= TOL[dtype] * scale


def test_deploy_form_moves_biases_into_the_convolutions():
    m = _randomised(dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, bias=True), torch.float64, 0)
    b1, b2 = m.b1.detach().clone(), m.bias.detach().clone()
    before = _count(m)
    m.switch_to_deploy()
    keys = set(m.state_dict())
    assert {"conv.weight", "conv.bias", "adjust.weight", "adjust.bias", "window_sum.weight", "alpha"} == keys
    torch.testing.assert_close(m.conv.bias, b2, rtol=0, atol=0)
    torch.testing.assert_close(m.adjust.bias, b2 - b1, rtol=0, atol=0)
    assert _count(m) == before  # b1 and b2 moved, not added or lost


def test_alpha_zero_reduces_to_the_plain_convolution():
    """Eq. 7 with α = 0 (the WLD initialisation): IC-B computes exactly what B computes."""
    m = _randomised(dict(in_channels=5, out_channels=7, kernel_size=3, stride=2, padding=1, alpha=0.0),
                    torch.float64, 3)
    x = torch.randn(1, 5, 11, 11, dtype=torch.float64)
    plain = F.conv2d(x, m.conv.weight, m.bias, stride=2, padding=1)
    torch.testing.assert_close(m(x), plain, rtol=0, atol=1e-12)


def test_window_sum_is_frozen_ones_and_not_counted():
    m = ICConv2d(3, 4, 3, padding=1)
    ws = m.window_sum
    assert isinstance(ws, nn.Conv2d) and ws.groups == 3 and ws.bias is None
    assert not ws.weight.requires_grad and bool((ws.weight == 1).all())
    m(torch.randn(1, 3, 6, 6)).sum().backward()
    assert ws.weight.grad is None and m.adjust.weight.grad is not None and m.b1.grad is not None


@pytest.mark.parametrize("learn_alpha", [False, True])
def test_alpha_is_a_buffer_or_a_parameter(learn_alpha):
    m = ICConv2d(3, 4, 3, alpha=0.02, learn_alpha=learn_alpha)
    assert "alpha" in m.state_dict()
    assert ("alpha" in dict(m.named_parameters())) is learn_alpha
    assert m.alpha.item() == pytest.approx(0.02)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3, 5, 7]), st.booleans(), st.booleans())
def test_param_increment_over_plain_conv(cin, cout, k, bias, learn_alpha):
    """Sec. 3.4: W' adds C_in·C_out (1/k² of the k×k kernel); plus b1 and a learnable α."""
    ic = ICConv2d(cin, cout, k, bias=bias, learn_alpha=learn_alpha)
    plain = nn.Conv2d(cin, cout, k, bias=bias)
    assert _count(ic) - _count(plain) == cin * cout + cout + int(learn_alpha)


# (in, out) of every 3x3 conv inside the residual blocks, torchvision layout.
def _basic_3x3(blocks: list[int]) -> list[tuple[int, int]]:
    shapes, cin = [], 64
    for stage, n in enumerate(blocks):
        w = 64 * 2**stage
        for _ in range(n):
            shapes += [(cin, w), (w, w)]
            cin = w
    return shapes


def _bottleneck_3x3(blocks: list[int]) -> list[tuple[int, int]]:
    return [(64 * 2**stage,) * 2 for stage, n in enumerate(blocks) for _ in range(n)]


# torchvision parameter counts of the plain networks
_PLAIN = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


@pytest.mark.parametrize(
    "arch, shapes, target_m",
    [
        ("resnet18", _basic_3x3([2, 2, 2, 2]), 12.9),
        ("resnet34", _basic_3x3([3, 4, 6, 3]), 24.2),
        ("resnet50", _bottleneck_3x3([3, 4, 6, 3]), 26.8),
    ],
)
def test_ic_resnet_params_match_ic_table1(arch, shapes, target_m):
    """Replacing every 3x3 conv in the blocks by an IC layer gives IC Table 1's counts."""
    total = _PLAIN[arch]
    with torch.device("meta"):
        for cin, cout in shapes:
            total += _count(ICConv2d(cin, cout, 3, padding=1)) - _count(nn.Conv2d(cin, cout, 3, padding=1, bias=False))
    assert round(total / 1e6, 1) == target_m


def test_bad_channels_rejected():
    with pytest.raises(ValueError, match="positive channel"):
        ICConv2d(0, 4, 3)


def test_eq6_output_shape_follows_the_shared_geometry():
    m = ICConv2d(4, 6, 3, stride=2, padding=2, dilation=2)
    y = m(torch.randn(1, 4, 13, 13))
    assert y.shape == nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2)(torch.randn(1, 4, 13, 13)).shape
    assert copy.deepcopy(m).kernel_size == (3, 3)
