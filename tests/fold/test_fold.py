"""fold_model(): exact Conv+BN fusion found by tracing, the report, the training-mode guard."""

import math

import pytest
import torch
from torch import nn

from deploy.core.errors import BadInputError
from deploy.fold.fold import fold_model
from deploy.fold.probe import output_error
from tests.helpers import randomise_bn


class Branchy(nn.Module):
    """Conv->BN pairs inside a residual block, plus a conv whose output has two users."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8, eps=1e-3)
        self.a = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.a_bn = nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 1)
        self.shared_bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        y = self.a_bn(self.a(x)) + x
        s = self.shared(y)
        z = self.shared_bn(s) + s  # the conv output feeds the BN and the add: not fusable
        return self.head(z.mean((2, 3)))


def test_fold_fuses_exactly_the_fusable_pairs():
    model = randomise_bn(Branchy(), torch.Generator().manual_seed(0))
    folded, report = fold_model(model, probe_shape=(3, 12, 12))
    fused = {row.name for row in report.rows}
    assert fused == {"stem", "a"}
    assert isinstance(folded.stem_bn, nn.Identity) and isinstance(folded.a_bn, nn.Identity)
    assert isinstance(folded.shared_bn, nn.BatchNorm2d)
    assert any(k.startswith("shared_bn") for k in report.kept)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()
    for row in report.rows:
        assert row.max_abs_error < 1e-10 and row.max_rel_error < 1e-12


def test_fold_does_not_touch_its_input_unless_inplace():
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, _ = fold_model(model, probe_shape=(3, 8, 8))
    assert folded is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same, _ = fold_model(model, inplace=True, probe_shape=(3, 8, 8))
    assert same is model and isinstance(model[1], nn.Identity)
    assert model[0].weight.dtype == torch.float32


def test_fold_refuses_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    with pytest.raises(BadInputError, match="training mode"):
        fold_model(model)


def test_untraceable_model_falls_back_to_sequential_pairs():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            if x.sum() > 0:  # control flow on data: torch.fx cannot trace this
                return self.body(x)
            return self.body(-x)

    model = randomise_bn(DataDependent(), torch.Generator().manual_seed(0))
    folded, report = fold_model(model, probe_shape=(3, 8, 8))
    assert [r.name for r in report.rows] == ["body.0"]
    assert any("torch.fx" in k for k in report.kept)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5, rtol=1e-5)


def test_a_tracing_error_of_many_lines_is_kept_as_one():
    class Untraceable(nn.Sequential):
        def forward(self, x):
            if isinstance(x, torch.fx.Proxy):
                raise RuntimeError("cannot trace this\nsecond line of the explanation")
            return super().forward(x)

    model = randomise_bn(Untraceable(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.Generator().manual_seed(0))
    _, report = fold_model(model.eval(), probe_shape=(3, 8, 8))
    assert [r.name for r in report.rows] == ["0"]
    assert ("Conv+BN search fell back to nn.Sequential order: torch.fx could not trace the model "
            "(cannot trace this)") in report.kept
    assert all("\n" not in k for k in report.kept)  # `deploy export` prints each kept entry on one line


def test_probe_error_is_the_max_over_finite_values_and_inf_on_a_non_finite_mismatch():
    """The fold rows' error: max abs error and its ratio to max|ref|; a NaN or inf is an error unless the other
    tensor holds the same value at that place (then it is left out of both maxima)."""
    ref = torch.tensor([[1.0, -4.0], [2.0, 0.5]], dtype=torch.float64)
    out = ref + torch.tensor([[0.0, 1e-3], [-2e-3, 0.0]], dtype=torch.float64)
    assert output_error(ref, out) == pytest.approx((2e-3, 2e-3 / 4.0), rel=1e-12)
    inf_ref, inf_out = ref.clone(), out.clone()
    inf_ref[0, 1] = inf_out[0, 1] = -torch.inf  # the same -inf: the worst finite error is the 2e-3, over max|ref| 2
    assert output_error(inf_ref, inf_out) == pytest.approx((2e-3, 2e-3 / 2.0), rel=1e-12)
    inf_out[0, 1] = torch.inf
    assert output_error(inf_ref, inf_out) == (math.inf, math.inf)
    nan_out = out.clone()
    nan_out[1, 1] = torch.nan
    assert output_error(ref, nan_out) == (math.inf, math.inf)
    assert output_error(ref, ref.clone()) == (0.0, 0.0)
