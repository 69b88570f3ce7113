"""Every zoo model folds exactly, and folded CoC/DO-Conv networks are their plain twins."""

import pytest
import torch

from deploy.fold.fold import fold_model
from deploy.models.complexity import count_macs, count_params
from deploy.models.random_init import randomize_model
from deploy.models.zoo import archs, build_model, supported_convs

PROBE = {"scnet50": (3, 128, 128), "scnet101": (3, 128, 128), "scnet50_v1d": (3, 128, 128), "scnet101_v1d": (3, 128, 128),
         "resnet20": (3, 32, 32)}
ENTRIES = [(arch, conv) for arch in archs() for conv in supported_convs(arch)]


def _model(arch: str, conv: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, conv)
    return randomize_model(model, PROBE.get(arch, (3, 32, 32)), seed=seed, batch=2).eval()


@pytest.mark.parametrize("arch,conv", ENTRIES)
def test_every_zoo_model_folds_exactly(arch, conv):
    model = _model(arch, conv).double()  # a float64 model folds to float64 kernels: no rounding
    shape = PROBE.get(arch, (3, 32, 32))
    folded, report = fold_model(model, probe_shape=shape)
    assert report.rows, "nothing was folded"
    assert report.worst_rel_error < 1e-10  # float64 probe, per layer
    # end to end in float64: exact folds agree to rounding; float32 would measure the
    # network's own float32 noise (~1e-4 of max|logit| for a random ResNet-101)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert float((ref - out).abs().max()) <= 1e-10 * float(ref.abs().max())
    leftover = [n for n, m in folded.named_modules() if getattr(m, "folds_to_conv", False)]
    assert not leftover


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet20"])
@pytest.mark.parametrize("conv", ["coc", "doconv"])
def test_folded_network_is_its_plain_twin(arch, conv):
    shape = PROBE.get(arch, (3, 32, 32))
    twin, _ = fold_model(_model(arch, "plain"), probe_shape=shape, measure=False)
    folded, _ = fold_model(_model(arch, conv), probe_shape=shape, measure=False)
    twin_sd, folded_sd = twin.state_dict(), folded.state_dict()
    assert list(folded_sd) == list(twin_sd)
    assert {k: v.shape for k, v in folded_sd.items()} == {k: v.shape for k, v in twin_sd.items()}
    assert count_params(folded) == count_params(twin)
    assert count_macs(folded, (3, 64, 64)) == count_macs(twin, (3, 64, 64))
