"""A Conv+BN pair is fused only when nothing else reads its tensors (deploy/fold/fold.py).

A conv whose weight is also used by ``F.conv2d(x, self.conv.weight)`` elsewhere, a BN whose
statistics are read elsewhere, and two modules sharing one weight tensor keep their pair (the
report says why); the fold's end-to-end float64 error measures the whole deployed model, so a
locally exact fold that changes another use cannot hide. Before, the first was fused with a
4.6e-16 row, then failed parity blaming that "exact" fold.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deploy
from deploy.core.errors import BadInputError
from deploy.fold.fold import fold_model
from tests.helpers import randomise_bn

SHAPE = (3, 12, 12)


class ConvWeightReused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + F.conv2d(x, self.conv.weight, padding=1)


class StatisticsReused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) - self.bn.running_mean.reshape(1, -1, 1, 1)


class SharedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.b, self.bn_b = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.b.weight = self.a.weight  # one tensor, two convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_a(self.a(x)) * self.bn_b(self.b(x))


@pytest.mark.parametrize("cls,kept", [(ConvWeightReused, "conv.weight"), (StatisticsReused, "bn.running_mean"),
                                      (SharedWeight, "a.weight")])
def test_pairs_whose_tensors_are_used_elsewhere_are_kept(cls, kept, tmp_path) -> None:
    torch.manual_seed(0)
    model = randomise_bn(cls(), torch.Generator().manual_seed(1))
    folded, report = fold_model(model, probe_shape=SHAPE)
    assert any(kept in k and "also used elsewhere" in k for k in report.kept), report.kept
    assert not any(r.kind.startswith("Conv2d+") for r in report.rows)
    x = torch.randn(2, *SHAPE)
    assert torch.allclose(folded(x), model(x), rtol=0, atol=1e-6)
    result = deploy.export(model, input_shape=SHAPE, output=tmp_path / "m.onnx", samples=2)
    assert result.parity.passed


def test_fold_coverage_names_the_kept_pairs_as_kept_not_foldable(tmp_path) -> None:
    """Without onnxsim (which fuses each BN into a conv of its own weights) the kept pairs reach the graph:
    fold coverage lists them as kept with the fold's reason, never as a BN to fuse (--strict-fold's exit 4)."""
    model = randomise_bn(SharedWeight(), torch.Generator().manual_seed(1)).eval()
    result = deploy.export(model, input_shape=SHAPE, output=tmp_path / "m.onnx", samples=1, simplify=False,
                           strict_fold=True)
    coverage = result.fold_coverage
    assert coverage.ok and [k.kind for k in coverage.kept] == ["conv_bn_kept"] * 2, coverage.summary()
    assert sorted(m for k in coverage.kept for m in k.modules) == ["a", "b", "bn_a", "bn_b"]
    assert "2 Conv+BN pair(s) kept on purpose" in coverage.summary() and "a.weight" in coverage.summary()
    unfolded = deploy.export(model, input_shape=SHAPE, output=tmp_path / "u.onnx", samples=1, simplify=False,
                             fold=False)  # no fold, no kept pairs: the same BNs are foldable structure
    assert [f.kind for f in unfolded.fold_coverage.findings] == ["batchnorm_after_conv"] * 2


def test_export_prints_the_kept_pair(deploy_cli, tmp_path) -> None:
    torch.manual_seed(0)
    torch.save(randomise_bn(ConvWeightReused(), torch.Generator().manual_seed(1)).eval(), tmp_path / "m.pt")
    run = deploy_cli("export", tmp_path / "m.pt", "--trust-pickle", "--input-shape", "3x12x12", "--samples", "2",
                     "-o", tmp_path / "m.onnx")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert "kept: conv+bn: Conv+BN kept, not fused: conv.weight also used elsewhere" in run.stdout


def test_end_to_end_error_is_measured_on_the_whole_model() -> None:
    torch.manual_seed(0)
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), torch.Generator())
    _, report = fold_model(model, probe_shape=SHAPE)
    assert report.end_to_end is not None and report.end_to_end[1] < 1e-13
    assert report.to_dict()["end_to_end"] == list(report.end_to_end)


def test_a_submodule_left_in_training_mode_is_named(deploy_cli, tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    model[1].train()
    with pytest.raises(BadInputError, match=r"modules in training mode \(1\)"):
        fold_model(model, probe_shape=SHAPE)
    torch.save(model, tmp_path / "m.pt")
    run = deploy_cli("export", tmp_path / "m.pt", "--trust-pickle", "--input-shape", "3x12x12",
                     "-o", tmp_path / "m.onnx")
    assert run.exit_code == 2 and "training mode (1)" in run.one_error_line()


def test_fold_coverage_sees_parallel_convs_summed_by_stack(tmp_path) -> None:
    class Stacked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c3, self.c1 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([self.c3(x), self.c1(x)]).sum(0)

    result = deploy.export(Stacked().eval(), input_shape=(4, 8, 8), output=tmp_path / "s.onnx", samples=1)
    coverage = result.fold_coverage
    assert not coverage.clean and [f.kind for f in coverage.findings] == ["parallel_convs"]
    assert coverage.findings[0].modules == ["c1", "c3"]
