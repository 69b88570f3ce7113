"""Fold methods that build their fused conv fresh (float32 on the CPU) and ``copy_()`` into it, and
forwards that cast: the fold makes them in the probe's dtype, measures them, and never exits 1
(tests/fresh_fuse_models.py; the same patterns as timm's LeViT and RepViT, RepVGG, MobileOne)."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from deploy import export, fold_model
from deploy.fold.probe import FLOAT32, FLOAT64, LAYER_LOCAL
from tests.fresh_fuse_models import ConvNorm, fresh_net

SHAPE = (3, 32, 24)
FOLDS = {"stem": "ConvNorm.fuse()", "mixer": "RepVggDw.fuse()", "rep": "RepVGGFresh.reparameterize()"}


def _ops(proto: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_fresh_modules_are_made_in_float64_and_exact() -> None:
    model = fresh_net()
    folded, report = fold_model(model, probe_shape=SHAPE)
    assert report.precision == FLOAT64 and report.precision_reason == ""
    kinds = {r.name: r.kind for r in report.rows}
    assert kinds == {**FOLDS, "mobile": "MobileOneFresh.switch_to_deploy()"}
    # float64 all the way: the fresh conv was created in float64, so copy_() rounded nothing
    # (made in float32 and moved afterwards, each row would show float32 rounding, ~1e-8)
    assert all(r.precision == FLOAT64 and r.max_rel_error < 1e-12 for r in report.rows), report.rows
    assert report.end_to_end is not None and report.end_to_end[1] < 1e-12
    assert all(p.dtype == torch.float32 for p in folded.parameters())
    assert not any(isinstance(m, (nn.BatchNorm2d, ConvNorm)) for m in folded.modules())
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-5)


def test_a_forward_that_casts_is_folded_layer_by_layer_in_float64() -> None:
    model = fresh_net(cast=True)
    folded, report = fold_model(model, probe_shape=SHAPE)
    assert report.precision == LAYER_LOCAL
    assert "does not run in float64" in report.precision_reason and "RuntimeError" in report.precision_reason
    assert {r.name: r.kind for r in report.rows} == {**FOLDS, "mobile": "MobileOneFresh.switch_to_deploy()"}
    assert all(r.precision == LAYER_LOCAL and r.max_rel_error < 1e-12 for r in report.rows), report.rows
    assert report.end_to_end is not None and 0 < report.end_to_end[1] < 1e-5  # the whole model, in float32
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-5)
    assert report.to_dict()["precision"] == LAYER_LOCAL and report.to_dict()["rows"][0]["precision"] == LAYER_LOCAL


def test_a_layer_that_casts_falls_back_to_float32() -> None:
    model = fresh_net(cast=True, casting_block=True)
    _, report = fold_model(model, probe_shape=SHAPE)
    rows = {r.name: r for r in report.rows}
    assert rows["mobile"].kind == "CastingBlock.reparameterize()" and rows["mobile"].precision == FLOAT32
    assert 0 < rows["mobile"].max_rel_error < 1e-5  # float32 rounding, measured in float32
    assert all(rows[n].precision == LAYER_LOCAL and rows[n].max_rel_error < 1e-12 for n in FOLDS)


@pytest.mark.parametrize("options", [{}, {"cast": True}, {"cast": True, "casting_block": True}])
def test_fresh_fuse_models_export_and_pass_parity(options, tmp_path) -> None:
    result = export(fresh_net(**options), input_size="32x24", output=tmp_path / "m.onnx", samples=2)
    assert result.parity.passed and result.fold is not None and len(result.fold.rows) == 4
    counts = _ops(onnx.load(str(result.onnx_path)))
    assert "BatchNormalization" not in counts and counts["Conv"] == 4
    assert result.fold_coverage.clean
    for cand in result.parity.candidates:
        assert cand.max_rel_err < 1e-5 and cand.top1_agreement == 1.0
    assert result.record["fold"]["precision"] == (LAYER_LOCAL if options else FLOAT64)


@pytest.mark.parametrize("cast", [False, True])
def test_fresh_fuse_models_through_the_cli(cast, deploy_cli, tmp_path) -> None:
    torch.save(fresh_net(cast=cast), tmp_path / "m.pt")
    run = deploy_cli("export", tmp_path / "m.pt", "--trust-pickle", "--input-size", "32x24", "--samples", 2)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert "4 layers folded" in run.stdout and ("layer-local" in run.stdout) == cast
    assert _ops(onnx.load(str(tmp_path / "m.onnx")))["Conv"] == 4


def test_inplace_fold_of_a_casting_forward() -> None:
    model = fresh_net(cast=True)
    folded, report = fold_model(model, probe_shape=SHAPE, inplace=True)
    assert folded is model and report.precision == LAYER_LOCAL and len(report.rows) == 4
    assert all(p.dtype == torch.float32 for p in folded.parameters())


def test_identity_residuals_around_one_conv_fold_into_it(tmp_path) -> None:
    from tests.fresh_fuse_models import residual_net

    model = residual_net()
    _, report = fold_model(model, probe_shape=SHAPE)
    rows = [r for r in report.rows if r.kind == "ResidualDrop (x + conv(x))->Conv2d"]
    assert [r.name for r in rows] == ["2", "3", "4"] and all(r.max_rel_error < 1e-12 for r in rows), report.rows
    result = export(model, input_size="32x24", output=tmp_path / "m.onnx", samples=2)
    counts = _ops(onnx.load(str(result.onnx_path)))
    assert counts["Conv"] == 4 and "Add" not in counts and "BatchNormalization" not in counts, counts
    assert result.parity.passed and result.fold_coverage.clean


def test_a_fold_method_that_builds_the_wrong_module_is_exit_2() -> None:
    from deploy.core.errors import BadInputError

    class LosesDilation(ConvNorm):
        @torch.no_grad()
        def fuse(self) -> nn.Conv2d:  # forgets the dilation: a module of another output size
            fused = super().fuse()
            return nn.Conv2d(fused.in_channels, fused.out_channels, 3, padding=2, groups=fused.groups)

    layer = LosesDilation(4, 4, 3, groups=4)
    layer.c = nn.Conv2d(4, 4, 3, 1, 2, dilation=2, groups=4, bias=False)
    for cast in (False, True):  # the whole model in float64, and layer-local
        model = nn.Sequential(nn.Conv2d(3, 4, 1), layer).eval()
        if cast:
            model.insert(0, nn.Identity()).register_forward_pre_hook(lambda _m, args: (args[0].float(),))
        model.eval()
        with pytest.raises(BadInputError, match=r"^1: the module its fold put in place does not run|^2: the module"):
            fold_model(model, probe_shape=SHAPE)
