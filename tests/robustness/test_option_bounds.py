"""Conv options have bounds and models are sized before they are built (deploy/layers/registry.py,
deploy/models/zoo.py, deploy/core/limits.py).

A value outside an option's declared bounds, or one that is not finite, is exit 2 before any tensor
is allocated; a model whose weights or intermediate tensors would exceed the limits is refused
from a build on the ``meta`` device. Before, `--conv-opt D_mul=1000000` and `sa=1000` were
killed by the kernel's OOM killer and `alpha=1e308` wrote a checkpoint holding inf.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deploy.core.errors import BadInputError
from deploy.core.limits import MAX_MODEL_ELEMENTS, check_model_size
from deploy.layers.registry import ConvKind, ConvOption, conv_kinds, register_conv_kind
from deploy.models.complexity import largest_activation, weight_elements
from deploy.models.zoo import build_model


@pytest.mark.parametrize("conv,option,text", [("doconv", "D_mul", "1000000"), ("coc", "sa", "1000"),
                                               ("ic", "alpha", "1e308"), ("ic", "alpha", "nan"),
                                               ("sp", "ratio", "0"), ("coc", "sl", "-1")])
def test_out_of_bounds_options_exit_2_before_building(conv, option, text, deploy_cli, tmp_path) -> None:
    out = tmp_path / "m.pt"
    run = deploy_cli("zoo", "create", "resnet20", "--conv", conv, "--conv-opt", f"{option}={text}", "-o", out)
    assert run.exit_code == 2, run.stderr
    line = run.one_error_line()
    assert f"option {option}=" in line and ("outside" in line or "finite" in line), line
    assert not out.exists()


def test_every_numeric_option_declares_bounds() -> None:
    for kind in conv_kinds():
        for opt in kind.options:
            if opt.type in (int, float):
                assert opt.low is not None and opt.high is not None, (kind.name, opt)
                assert opt.default is None or opt.low <= opt.default <= opt.high, (kind.name, opt)
    unbounded = ConvKind(name="unbounded", title="U", module=nn.Conv2d, roles=frozenset({"block3x3"}),
                         build=lambda role, spec, options: nn.Conv2d(1, 1, 1),
                         options=(ConvOption("width", int, 4),))
    with pytest.raises(ValueError, match="need bounds"):
        register_conv_kind(unbounded)


def test_weights_are_counted_on_the_meta_device_before_the_build() -> None:
    with pytest.raises(BadInputError, match=f"more than the {MAX_MODEL_ELEMENTS:,}"):
        build_model("resnet50", "doconv", D_mul=1000)  # 1.3 G weights: refused without allocating them
    model = build_model("resnet20", "doconv", D_mul=36)
    assert model.conv_kwargs == {"D_mul": 36}


def test_largest_activation_and_the_limit() -> None:
    with torch.device("meta"):
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, stride=2, padding=1))
    assert largest_activation(net, (3, 10, 12)) == 8 * 10 * 12
    assert weight_elements(net) == 8 * 3 * 9 + 8 + 2 * 8 * 9 + 2
    check_model_size("net", 10, 10)
    with pytest.raises(BadInputError, match="a tensor of 268,435,457 elements"):
        check_model_size("net", 10, (1 << 28) + 1)


def test_second_parity_size_of_dynamic_hw_is_bounded(tmp_path) -> None:
    """The API with dynamic H/W at 4096x4096 ran parity at 8192x8192 (7.9 GB for a 1x1 conv)."""
    import deploy

    net = nn.Sequential(nn.Conv2d(1, 1, 1)).eval()
    with pytest.raises(BadInputError, match=r"twice the input size \(8192x8192\)"):
        deploy.export(net, input_shape=(1, 4096, 4096), dynamic="batch,hw", output=tmp_path / "n.onnx")
    assert not list(tmp_path.iterdir())


def test_recorded_input_shape_is_bounded(zoo_checkpoint, deploy_cli, tmp_path) -> None:
    obj = torch.load(zoo_checkpoint("resnet20"), weights_only=True)
    obj["input_shape"] = [3, 4100, 8]
    big = tmp_path / "big.pt"
    torch.save(obj, big)
    run = deploy_cli("export", big, "-o", tmp_path / "big.onnx")
    line = run.one_error_line()
    assert run.exit_code == 2 and "big.pt: the checkpoint records an input shape of 3x4100x8" in line
    assert "4096 pixels a side" in line and "--input-shape" not in line  # the user gave no option
