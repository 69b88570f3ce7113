"""SPConv3x3 (SPConv Sec. 3.2-3.4): Eq. 3-6 forward, exact BN folds, errors, parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from deploy.layers.spconv import SPConv3x3
from tests.helpers import randomise_bn

FOLD_SETTINGS = settings(max_examples=25, deadline=None)
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
RATIOS = [1 / 2, 1 / 4, 1 / 8, 3 / 4, 3 / 8]


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def _valid(cin: int, cout: int, ratio: float) -> bool:
    rep = int(cin * ratio)
    return rep > 0 and rep % 2 == 0 and cin - rep > 0 and cout % 2 == 0


def _bn_eval(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    return (x - v(bn.running_mean)) / torch.sqrt(v(bn.running_var) + bn.eps) * v(bn.weight) + v(bn.bias)


def _reference(m: SPConv3x3, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3-6 written out with functional ops; the 2-way softmax as a sigmoid of the difference."""
    rep = m.inplanes_3x3
    x_rep, x_red = x[:, :rep], x[:, rep:]
    gwc = F.conv2d(x_rep, m.gwc.weight, stride=m.stride, padding=1, groups=2)
    if m.stride == 2:
        x_rep, x_red = F.avg_pool2d(x_rep, 2), F.avg_pool2d(x_red, 2)
    u3 = _bn_eval(gwc + F.conv2d(x_rep, m.pwc.weight), m.bn1)
    u1 = _bn_eval(F.conv2d(x_red, m.conv1x1.weight, m.conv1x1.bias), m.bn2)
    beta = torch.sigmoid(u3.mean((2, 3), keepdim=True) - u1.mean((2, 3), keepdim=True))
    return beta * u3 + (1 - beta) * u1


@st.composite
def sp_cases(draw):
    cin = 2 * draw(st.integers(2, 16))
    cout = 2 * draw(st.integers(1, 16))
    ratio = draw(st.sampled_from(RATIOS))
    assume(_valid(cin, cout, ratio))
    stride = draw(st.sampled_from([1, 2]))
    size = draw(st.integers(1, 8)) * 2 if stride == 2 else draw(st.integers(1, 16))
    return cin, cout, ratio, stride, size


@FOLD_SETTINGS
@given(sp_cases(), st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31 - 1))
def test_forward_is_eq3_to_eq6_and_fold_is_exact(case, dtype, seed):
    cin, cout, ratio, stride, size = case
    torch.manual_seed(seed)
    m = SPConv3x3(cin, cout, stride, ratio).to(dtype)
    randomise_bn(m, torch.Generator().manual_seed(seed))
    m.eval()
    x = torch.randn(2, cin, size, size, dtype=dtype)
    with torch.no_grad():
        y = m(x)
        scale = y.abs().max().item()
        assert (y - _reference(m, x)).abs().max().item() <= TOL[dtype] * scale
        m.switch_to_deploy()
        m.switch_to_deploy()  # idempotent
        y_dep = m(x)
    assert y.shape == (2, cout, size // stride, size // stride)
    assert (y - y_dep).abs().max().item() <= TOL[dtype] * scale
    assert isinstance(m.bn1, nn.Identity) and isinstance(m.bn2, nn.Identity)
    assert m.gwc.groups == 2 and m.pwc.kernel_size == (1, 1)  # still two convs: no MAC increase


def test_deploy_keys_and_bias_placement():
    m = SPConv3x3(8, 8).eval()
    before = set(m.state_dict())
    assert {"gwc.weight", "pwc.weight", "conv1x1.weight", "conv1x1.bias"} < before
    assert {"bn1.running_mean", "bn2.running_var"} < before
    m.switch_to_deploy()
    assert set(m.state_dict()) == {"gwc.weight", "gwc.bias", "pwc.weight", "conv1x1.weight", "conv1x1.bias"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(in_channels=8, out_channels=8, ratio=0.0), r"representative \(3x3\) part .* = 0 channels"),
        (dict(in_channels=8, out_channels=8, ratio=1.0), r"redundant \(1x1\) part 0 channels"),
        (dict(in_channels=8, out_channels=8, ratio=1.5), r"redundant \(1x1\) part -4 channels"),
        (dict(in_channels=4, out_channels=8, ratio=0.125), r"representative \(3x3\) part int\(4\*0.125\) = 0 channels"),
        (dict(in_channels=6, out_channels=8, ratio=0.5), "odd representative width 3"),
        (dict(in_channels=8, out_channels=7, ratio=0.5), "out_channels=7 must be even"),
        (dict(in_channels=8, out_channels=8, stride=3), "stride 1 or 2"),
    ],
)
def test_construction_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SPConv3x3(**kwargs)


def test_odd_input_with_stride_2_names_the_size():
    m = SPConv3x3(8, 8, stride=2)
    with pytest.raises(ValueError, match=r"15x16 input.*even height and width"):
        m(torch.randn(1, 8, 15, 16))
    assert m(torch.randn(1, 8, 16, 16)).shape == (1, 8, 8, 8)
    assert SPConv3x3(8, 8, stride=1)(torch.randn(1, 8, 15, 15)).shape == (1, 8, 15, 15)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 64), st.integers(1, 64), st.sampled_from(RATIOS))
def test_param_formula(cin, half_out, ratio):
    """Eq. 9 weights (9·αL/2·M + αL·M + (1−α)L·M) plus conv1x1's bias and bn1, bn2."""
    cout = 2 * half_out
    assume(_valid(cin, cout, ratio))
    rep = int(cin * ratio)
    m = SPConv3x3(cin, cout, ratio=ratio)
    weights = 9 * (rep // 2) * cout + rep * cout + (cin - rep) * cout
    assert _count(m) == weights + cout + 4 * cout
    if cin * ratio == rep:
        assert weights == pytest.approx((9 * ratio / 2 + 1) * cin * cout)


def _sp_network(plain_total: int, shapes: list[tuple[int, int, int]], ratio: float) -> int:
    """A plain network's count with each listed 3x3 conv (in, out, stride) swapped for SPConv."""
    total = plain_total
    with torch.device("meta"):
        for cin, cout, stride in shapes:
            total += _count(SPConv3x3(cin, cout, stride, ratio)) - 9 * cin * cout
    return total


def test_spconv_resnet50_params_match_table2():
    """Only Bottleneck.conv2 replaced; the block keeps its bn2 (ResNet-50: 25,557,032)."""
    shapes = [(w, w, 2 if i == 0 and s else 1) for s, n in enumerate([3, 4, 6, 3]) for i in range(n)
              for w in [64 * 2**s]]
    half = _sp_network(25_557_032, shapes, 1 / 2)
    assert half == 18_345_448  # 18.35 M; Table 2 prints 18.34 M (= this minus conv1x1's 3,776 biases)
    assert abs(half / 1e6 - 18.34) < 0.01
    assert round(_sp_network(25_557_032, shapes, 1 / 4) / 1e6, 2) == 16.93
    assert round(_sp_network(25_557_032, shapes, 1 / 8) / 1e6, 2) == 16.22


def test_spconv_resnet20_params_match_table1():
    """CIFAR ResNet-20 (option-A shortcuts, 269,722 params), both 3x3 convs of every block replaced."""
    shapes, cin = [], 16
    for s, w in enumerate([16, 32, 64]):
        for i in range(3):
            shapes += [(cin, w, 2 if i == 0 and s else 1), (w, w, 1)]
            cin = w
    assert round(_sp_network(269_722, shapes, 1 / 2) / 1e6, 2) == 0.10
