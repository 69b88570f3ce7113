"""count_params / count_macs against hand-derived counts and torchvision's known totals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deploy.errors import BadInputError
from deploy.models.complexity import conv_linear_macs, count_macs, count_params, format_count
from deploy.models.registry import build_model


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
    per = conv_linear_macs(model, torch.zeros(1, 3, 16, 16))
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
