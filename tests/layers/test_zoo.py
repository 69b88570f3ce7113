"""The model zoo: the papers' parameter / MAC figures, which convs each paper replaces,
reference key names, forward passes at small inputs and the registry's errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deploy.core.errors import BadInputError
from deploy.layers.paper import parse_count, printed_range
from deploy.layers.registry import conv_kinds
from deploy.models.complexity import count_macs, count_macs_thop, count_params
from deploy.models.resnet import CifarResNet, ConvFactory
from deploy.models.zoo import archs, build_model, paper_targets, supported_convs

ARCHS = archs()
CONVS = tuple(k.name for k in conv_kinds())
PAPER_TARGETS = paper_targets()

PAPER_CLASSES = {"CoCConv2d": "coc", "DOConv2d": "doconv", "ICConv2d": "ic", "SPConv3x3": "sp"}


def deploy_form(model: nn.Module) -> nn.Module:
    """CoC / DO-Conv layers replaced by the conv they fold into, BN kept (papers' counting)."""
    for name, module in list(model.named_modules()):
        if getattr(module, "folds_to_conv", False):
            model.set_submodule(name, module.to_conv2d())
    return model


def meta_model(arch: str, conv: str, **kw) -> nn.Module:
    """Shapes only: counting a full-size ImageNet model costs no arithmetic."""
    with torch.device("meta"):
        return build_model(arch, conv, **kw).eval()


def replaced(model: nn.Module, conv: str) -> set[str]:
    return {n for n, m in model.named_modules() if PAPER_CLASSES.get(type(m).__name__) == conv}


# ---------------------------------------------------------------- paper figures


@pytest.mark.parametrize("target", PAPER_TARGETS, ids=lambda t: t.label)
def test_params_match_the_paper_to_its_last_printed_digit(target):
    model = deploy_form(meta_model(target.arch, target.conv, **target.conv_kwargs))
    lo, hi = printed_range(target.params)
    assert lo <= count_params(model) <= hi, f"{target.label}: {count_params(model)} vs {target.params}"


@pytest.mark.parametrize("target", [t for t in PAPER_TARGETS if t.convention == "conv"], ids=lambda t: t.label)
def test_macs_within_3_percent_of_the_paper(target):
    model = deploy_form(meta_model(target.arch, target.conv, **target.conv_kwargs))
    paper, _ = parse_count(target.macs)
    assert count_macs(model, model.input_shape) == pytest.approx(paper, rel=0.03)


@pytest.mark.parametrize("target", [t for t in PAPER_TARGETS if t.convention == "thop"], ids=lambda t: t.label)
def test_thop_convention_targets_within_1_5_percent(target):
    """SPConv's tables count as thop does: in that convention every row is within 1.5 %
    (in the conv convention SPConv-ResNet-20 is 15 % and 21 % below the paper)."""
    model = deploy_form(meta_model(target.arch, target.conv, **target.conv_kwargs))
    paper, _ = parse_count(target.macs)
    assert count_macs_thop(model, model.input_shape) == pytest.approx(paper, rel=0.015)


def test_spconv_resnet20_macs_differ_from_the_paper_by_one_constant():
    """In the conv convention, what depends on alpha — the convolutions — matches the paper
    (17.91 M - 12.89 M = 5.02 M); the constant rest is what thop adds (BatchNorm, pooling)."""
    rows = {t.conv_kwargs["ratio"]: t for t in PAPER_TARGETS if t.arch == "resnet20" and t.conv == "sp"}
    ours = {r: count_macs(meta_model("resnet20", "sp", ratio=r), (3, 32, 32)) for r in rows}
    paper = {r: parse_count(t.macs)[0] for r, t in rows.items()}
    assert ours[0.5] - ours[0.25] == pytest.approx(paper[0.5] - paper[0.25], rel=0.01)
    offsets = [paper[r] - ours[r] for r in rows]
    assert all(2.5e6 < o < 3.0e6 for o in offsets) and abs(offsets[0] - offsets[1]) < 0.05e6


def test_every_paper_conv_is_covered_by_targets():
    assert {t.conv for t in PAPER_TARGETS} == set(CONVS) and len(PAPER_TARGETS) == 25
    for t in PAPER_TARGETS:
        assert t.conv in supported_convs(t.arch) and t.source


def test_foldable_layers_vanish_in_deploy_form():
    for conv in ("coc", "doconv"):
        trained = meta_model("resnet50", conv)
        assert replaced(trained, conv)
        plain = meta_model("resnet50", "plain")
        folded = deploy_form(trained)
        assert not replaced(folded, conv)
        assert [type(m) for m in folded.modules()] == [type(m) for m in plain.modules()]
        assert {k: v.shape for k, v in folded.state_dict().items()} == {
            k: v.shape for k, v in plain.state_dict().items()
        }


def test_local_deploy_form_agrees_with_fold_model():
    """One cross-check is enough (fold_model probes in float64, slow on CPU for CoC)."""
    from deploy.fold.fold import fold_model

    conv = "doconv"
    torch.manual_seed(0)
    model = build_model("resnet20", conv).eval()
    folded, _ = fold_model(model, fuse_bn=False)
    ours = deploy_form(model)
    assert not replaced(folded, conv)
    assert count_params(folded) == count_params(ours) == count_params(build_model("resnet20"))
    assert count_macs(folded, (3, 32, 32)) == count_macs(ours, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), ours(x), rtol=1e-4, atol=1e-4)


def test_resnet20_shortcut_choice():
    """Option A (zero-pad) misses SPConv Table 1's alpha=1/4 params (0.069 M vs 0.071 M);
    option B (1x1 conv + BN) gives 0.072 M. B adds exactly the two projections."""
    a, b = CifarResNet(shortcut="A"), CifarResNet(shortcut="B")
    assert count_params(b) - count_params(a) == 16 * 32 + 32 * 64 + 2 * (32 + 64)
    assert count_params(a) == 269_722
    lo, hi = printed_range("0.071 M")
    assert not lo <= count_params(CifarResNet(make_conv=ConvFactory("sp", ratio=0.25), shortcut="A")) <= hi
    assert lo <= count_params(CifarResNet(make_conv=ConvFactory("sp", ratio=0.25), shortcut="B")) <= hi
    assert build_model("resnet20").shortcut == "B"


# ---------------------------------------------------------------- which convs each paper replaces

_R50_CONV2 = {f"layer{s}.{b}.conv2" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)}
_R50_1X1 = {f"layer{s}.{b}.conv{i}" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n) for i in (1, 3)}
_R50_DOWN = {f"layer{s}.0.downsample.0" for s in range(1, 5)}
_R20_3X3 = {f"layer{s}.{b}.conv{i}" for s in (1, 2, 3) for b in range(3) for i in (1, 2)}


@pytest.mark.parametrize(
    ("arch", "conv", "expected"),
    [
        ("resnet50", "coc", _R50_CONV2 | {"conv1"}),
        ("resnet50", "doconv", _R50_CONV2 | _R50_1X1 | _R50_DOWN | {"conv1"}),
        ("resnet50", "ic", _R50_CONV2),
        ("resnet50", "sp", _R50_CONV2),
        ("resnet20", "coc", _R20_3X3 | {"conv1"}),
        ("resnet20", "doconv", _R20_3X3 | {"conv1", "layer2.0.downsample.0", "layer3.0.downsample.0"}),
        ("resnet20", "ic", _R20_3X3),
        ("resnet20", "sp", _R20_3X3),
        ("resnet18", "plain", set()),
    ],
)
def test_each_paper_replaces_exactly_its_layers(arch, conv, expected):
    model = meta_model(arch, conv)
    assert replaced(model, conv) == expected
    assert type(model.fc) is nn.Linear
    slots = {"resnet50": _R50_CONV2 | _R50_1X1 | _R50_DOWN, "resnet20": _R20_3X3}.get(arch, set())
    for name in (slots | {"conv1"}) - expected:  # everything else stays a plain conv
        assert type(model.get_submodule(name)) is nn.Conv2d, name


def test_spconv_resnet50_keys_are_the_reference_resnet_sp():
    keys = set(meta_model("resnet50", "sp").state_dict())
    for k in ("conv2.gwc.weight", "conv2.pwc.weight", "conv2.conv1x1.weight", "conv2.conv1x1.bias",
              "conv2.bn1.weight", "conv2.bn2.running_var", "bn2.weight", "downsample.0.weight",
              "downsample.1.running_mean"):
        assert f"layer2.0.{k}" in keys
    assert "conv1.weight" in keys and "fc.bias" in keys and "bn1.num_batches_tracked" in keys


def test_scnet_keys_are_the_reference_scnet():
    keys = set(meta_model("scnet101", "sc").state_dict())
    for k in ("conv1_a.weight", "bn1_a.bias", "k1.0.weight", "k1.1.running_var", "conv1_b.weight", "bn1_b.weight",
              "scconv.k2.1.weight", "scconv.k2.2.bias", "scconv.k3.0.weight", "scconv.k3.1.weight",
              "scconv.k4.0.weight", "scconv.k4.1.running_mean", "conv3.weight", "bn3.weight",
              "downsample.0.weight", "downsample.1.weight"):
        assert f"layer3.0.{k}" in keys
    assert "layer3.22.scconv.k4.0.weight" in keys and "layer3.23.conv3.weight" not in keys
    assert {"conv1.weight", "bn1.weight", "fc.weight", "fc.bias"} <= keys


# ---------------------------------------------------------------- forward passes


@pytest.mark.parametrize("conv", ["plain", "coc", "doconv", "ic", "sp"])
def test_resnet18_forward_at_64(conv):
    torch.manual_seed(0)
    model = build_model("resnet18", conv, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("conv", ["plain", "coc", "doconv", "ic", "sp"])
def test_resnet20_forward_at_32_trains(conv):
    torch.manual_seed(0)
    model = build_model("resnet20", conv)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_scnet50_forward():
    torch.manual_seed(0)
    model = build_model("scnet50", "sc", num_classes=5).eval()
    with torch.no_grad():  # 128x128: layer4's SCConv needs inputs of at least r = 4 pixels
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 5)


def test_resnet20_shortcut_a_forward():
    model = CifarResNet(shortcut="A").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_and_conv_builds_with_its_attributes(arch):
    for conv in supported_convs(arch):
        model = meta_model(arch, conv)
        assert (model.arch, model.conv) == (arch, conv)
        small = arch == "resnet20"
        assert model.num_classes == (10 if small else 1000) == model.fc.out_features
        assert model.input_shape == ((3, 32, 32) if small else (3, 224, 224))
        expected = {"ratio": 0.5} if conv == "sp" else {"avd": True} if arch.endswith("_v1d") else {}
        assert model.conv_kwargs == expected  # recorded options, and the named model's own (SCNet-v1d's avd)


def test_kwargs_are_passed_and_recorded():
    model = meta_model("resnet20", "sp", ratio=0.25)
    assert model.conv_kwargs == {"ratio": 0.25} and model.layer1[0].conv1.inplanes_3x3 == 4
    assert build_model("resnet20", num_classes=100).fc.out_features == 100
    doconv = meta_model("resnet20", "doconv", D_mul=12)
    assert doconv.layer1[0].conv1.W.shape == (16, 16, 12)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("resnet19",), {}, "unknown arch 'resnet19'"),
        (("resnet50", "octconv"), {}, "unknown conv 'octconv'"),
        (("scnet50", "plain"), {}, "scnet50 is resnet50 with conv='sc'"),
        (("resnet50", "sc"), {}, "is called scnet50"),
        (("resnet18", "sc"), {}, "cannot be built with conv='sc'"),
        (("resnet50", "coc"), {"ratio": 0.5}, "does not take ratio"),
        (("resnet18",), {"alpha": 1.0}, "it takes no options"),
        (("resnet20", "sp"), {"ratio": "half"}, "is not a number"),
        (("resnet20", "ic"), {"learn_alpha": 1}, "is not true or false"),
        (("resnet20", "sp"), {"ratio": 0.0}, "option ratio=0.0 is outside"),
        (("resnet20",), {"num_classes": 0}, "num_classes"),
    ],
)
def test_clear_errors(args, kwargs, match):
    with pytest.raises(BadInputError, match=match):
        build_model(*args, **kwargs)
    with pytest.raises(BadInputError):
        supported_convs("vgg16")


def test_printed_range():
    assert printed_range("18.34 M") == pytest.approx((18.33e6, 18.35e6))
    assert printed_range("0.071 M") == pytest.approx((0.070e6, 0.072e6))
    assert parse_count("4.1 G") == pytest.approx((4.1e9, 0.1e9))
