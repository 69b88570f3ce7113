"""count_params / count_macs / count_macs_thop against hand-derived counts, torchvision's known
totals and the real thop package."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deploy.core.errors import BadInputError
from deploy.fold.fold import fold_model
from deploy.layers.doconv import DOConv2d
from deploy.models.complexity import count_macs, count_macs_thop, count_params, format_count, macs_by_module
from deploy.models.zoo import build_model


def test_conv_and_linear_macs_follow_the_formula():
    # 3->8 3x3 stride 2 pad 1 on 16x16: 8x8x8 outputs, each 3*3*3 MACs; then a grouped
    # 8->8 (groups 4) 1x1 conv: 8*8*8 outputs each 2 MACs; then Linear(512 -> 5).
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1, groups=4),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 5),
    )
    expected = 8 * 8 * 8 * 27 + 8 * 8 * 8 * 2 + 5 * 512
    assert count_macs(model, (3, 16, 16)) == expected
    per = macs_by_module(model, torch.zeros(1, 3, 16, 16))
    assert per == {"0": 8 * 8 * 8 * 27, "3": 8 * 8 * 8 * 2, "5": 5 * 512}


def test_rectangular_kernels_and_batch_one():
    conv = nn.Conv2d(4, 6, (1, 5), padding=(0, 2))
    assert count_macs(conv, (4, 7, 9)) == 6 * 7 * 9 * 4 * 5


def test_a_module_called_twice_is_counted_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    assert count_macs(Twice(), (2, 5, 5)) == 2 * (2 * 25 * 2 * 9)


def test_params_trainable_only_and_shared_once():
    frozen = nn.Conv2d(3, 4, 3, bias=False)
    frozen.weight.requires_grad_(False)
    shared = nn.Linear(10, 10)  # 110 params
    model = nn.Sequential(frozen, shared, shared, nn.BatchNorm2d(7))
    assert count_params(model) == 110 + 14


def test_training_flag_is_restored_and_bn_is_not_disturbed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    count_macs(model, (3, 8, 8))
    assert model.training
    assert torch.equal(model[1].running_mean, before)  # ran in eval mode


@pytest.mark.parametrize("shape", [(3, 32), (0, 32, 32), (3, -1, 4)])
def test_bad_input_shape(shape):
    with pytest.raises(BadInputError, match="input_shape"):
        count_macs(nn.Conv2d(3, 3, 1), shape)


@pytest.mark.parametrize(
    ("arch", "macs"),
    # torchvision's published conv+linear totals: 1.81 / 3.66 / 4.09 / 7.80 GMACs
    [("resnet18", 1.81e9), ("resnet34", 3.66e9), ("resnet50", 4.09e9), ("resnet101", 7.80e9)],
)
def test_plain_imagenet_resnets_match_torchvision(arch, macs):
    with torch.device("meta"):
        model = build_model(arch)
    assert round(count_macs(model, (3, 224, 224)) / 1e9, 2) == pytest.approx(macs / 1e9)


def test_meta_device_counts_equal_real_counts():
    for conv, kw in (("plain", {}), ("sp", {"ratio": 0.25}), ("ic", {})):
        torch.manual_seed(0)
        real = build_model("resnet20", conv, **kw)
        with torch.device("meta"):
            meta = build_model("resnet20", conv, **kw)
        assert count_params(meta) == count_params(real)
        assert count_macs(meta, (3, 32, 32)) == count_macs(real, (3, 32, 32))


def test_plain_resnet20_counts_from_first_principles():
    # 3x3 stem 3->16 at 32x32, 6 convs 16->16 at 32x32, 32-stage and 64-stage at 16x16 / 8x8,
    # two 1x1 projection shortcuts (option B) and the 64->10 classifier.
    conv3 = 9 * (3 * 16 * 32**2 + 6 * 16 * 16 * 32**2 + (16 * 32 + 5 * 32 * 32) * 16**2 + (32 * 64 + 5 * 64 * 64) * 8**2)
    shortcuts = 16 * 32 * 16**2 + 32 * 64 * 8**2
    model = build_model("resnet20")
    assert count_macs(model, (3, 32, 32)) == conv3 + shortcuts + 64 * 10


def test_format_count():
    assert format_count(25_557_032) == "25.56 M"
    assert format_count(4_089_184_256, "MACs") == "4.09 GMACs"
    assert format_count(640) == "640"


class FunctionalConv(nn.Module):
    """A user model that convolves with ``F.conv2d`` (what a hook on nn.Conv2d never sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, padding=1)
        return self.fc(y.mean((2, 3)))


def test_functional_convs_are_counted():
    assert count_macs(FunctionalConv(), (3, 16, 16)) == 8 * 16 * 16 * 27 + 8 * 4
    per = macs_by_module(FunctionalConv(), torch.zeros(1, 3, 16, 16))
    assert per == {"": 8 * 16 * 16 * 27, "fc": 8 * 4}


def test_doconv_training_form_counts_its_kernel_composition_too():
    """DO-Conv's training form computes W' = D^T o W every forward (an einsum): real work,
    counted; its deploy form is exactly the plain convolution."""
    layer = DOConv2d(8, 16, 3, padding=1).eval()
    conv = 16 * 10 * 10 * 8 * 9
    einsum = 16 * 8 * 9 * 9  # (out, in) pairs x M*N outputs x D_mul terms
    assert count_macs(layer, (8, 10, 10)) == conv + einsum
    assert count_macs(layer.to_conv2d(), (8, 10, 10)) == conv


@pytest.mark.parametrize(("conv", "kw", "thop_ops"), [
    ("plain", {}, 41_620_160),  # SPConv Table 1 prints 41.62 M
    ("sp", {"ratio": 0.5}, 17_723_392),
    ("sp", {"ratio": 0.25}, 12_709_888),
])
def test_thop_convention_reproduces_the_spconv_table(conv, kw, thop_ops):
    with torch.device("meta"):
        model = build_model("resnet20", conv, **kw).eval()
    deploy, _ = fold_model(model, inplace=True, fuse_bn=False, measure=False)
    assert count_macs_thop(deploy, (3, 32, 32)) == thop_ops


@pytest.mark.parametrize(("arch", "conv", "kw"), [
    ("resnet20", "plain", {}), ("resnet20", "sp", {"ratio": 0.25}), ("resnet20", "ic", {}), ("resnet20", "coc", {}),
])
def test_thop_convention_equals_the_thop_package(arch, conv, kw):
    thop = pytest.importorskip("thop")
    torch.manual_seed(0)
    deploy, _ = fold_model(build_model(arch, conv, **kw).eval(), fuse_bn=False, measure=False)
    ops, _ = thop.profile(deploy, inputs=(torch.randn(1, 3, 32, 32),), verbose=False)
    assert count_macs_thop(deploy, (3, 32, 32)) == int(ops)
