"""Re-parameterizable models that follow other code bases' conventions, and BatchNorm subclasses.

The blocks below are written here, from the papers (RepVGG Sec. 3.3: a 3x3 conv+BN, a 1x1
conv+BN and an identity BN summed, merged into one 3x3 conv; MobileOne Sec. 3: k
depthwise kxk conv+BN branches, a 1x1 "scale" branch and an identity BN) — timm does not
import beside the CPU torch here. One block folds itself with ``reparameterize()`` (timm's
RepVGG / MobileOne blocks), the other with ``fuse()`` returning its replacement (LeViT's
convention). Folded, the exported graph must be the deploy form: no BatchNormalization,
one Conv per block. The same blocks without the method must be reported by fold coverage
and fail with ``--strict-fold`` (exit 4).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deploy import export, fold_model
from deploy.core.errors import GraphCheckError
from deploy.fold.reparam import PostNorm
from deploy.layers.conv_bn import bn_scale_shift, fuse_conv_bn
from tests.helpers import randomise_bn

SHAPE = (3, 16, 16)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


@torch.no_grad()
def branch_kernel(branch: nn.Module, channels: int, groups: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel k x k, bias) of one branch: a conv+BN (padded to k x k) or an identity BN (identity kernel)."""
    if isinstance(branch, nn.BatchNorm2d):
        per_group = channels // groups
        eye = torch.zeros(channels, per_group, k, k, dtype=branch.weight.dtype)
        eye[torch.arange(channels), torch.arange(channels) % per_group, k // 2, k // 2] = 1
        scale, shift = bn_scale_shift(branch)
        return eye * scale.reshape(-1, 1, 1, 1), shift
    fused = fuse_conv_bn(branch[0], branch[1])
    pad = (k - fused.kernel_size[0]) // 2
    assert fused.bias is not None
    return F.pad(fused.weight, [pad] * 4), fused.bias


def merged_conv(branches: list[nn.Module | None], like: nn.Conv2d, k: int) -> nn.Conv2d:
    """One conv holding the sum of the branches' kernels and biases (the branches' convs are linear)."""
    conv = nn.Conv2d(like.in_channels, like.out_channels, k, like.stride, k // 2, groups=like.groups,
                     dtype=like.weight.dtype)
    parts = [branch_kernel(b, like.out_channels, like.groups, k) for b in branches if b is not None]
    with torch.no_grad():
        conv.weight.copy_(sum(p[0] for p in parts))
        conv.bias.copy_(sum(p[1] for p in parts))
    return conv


class RepVGGBranches(nn.Module):
    """RepVGG's training-time block (Sec. 3.2): ReLU(BN(conv3x3 x) + BN(conv1x1 x) + BN(x)), no fold method."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dense = conv_bn(cin, cout, 3, stride)
        self.one = conv_bn(cin, cout, 1, stride)
        self.identity = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None
        self.act = nn.ReLU()
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.act(self.reparam(x))
        out = self.dense(x) + self.one(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)


class RepVGGBlock(RepVGGBranches):
    """The same block with timm's in-place ``reparameterize()`` (RepVGG Sec. 3.3)."""

    def reparameterize(self) -> None:
        self.reparam = merged_conv([self.dense, self.one, self.identity], self.dense[0], 3)
        del self.dense, self.one, self.identity


class MobileOneBranches(nn.Module):
    """MobileOne's training-time depthwise block (Sec. 3): k kxk conv+BN, a 1x1 conv+BN, an identity BN."""

    def __init__(self, channels: int, k: int = 3, branches: int = 2) -> None:
        super().__init__()
        self.kxk = nn.ModuleList(conv_bn(channels, channels, k, groups=channels) for _ in range(branches))
        self.scale = conv_bn(channels, channels, 1, groups=channels)
        self.skip = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scale(x) + self.skip(x)
        for branch in self.kxk:
            out = out + branch(x)
        return self.act(out)


class MobileOneBlock(MobileOneBranches):
    """The same block with ``fuse()`` returning the module that replaces it (LeViT's convention)."""

    def fuse(self) -> nn.Module:
        conv = merged_conv([*self.kxk, self.scale, self.skip], self.kxk[0][0], self.kxk[0][0].kernel_size[0])
        return nn.Sequential(conv, self.act)


def net(block: type[nn.Module], seed: int = 0) -> nn.Module:
    """stem-less toy: a strided block (no identity branch), two identity blocks, a classifier."""
    torch.manual_seed(seed)
    if issubclass(block, RepVGGBranches):
        body = [block(3, 8, 2), block(8, 8), block(8, 8)]
    else:
        body = [nn.Conv2d(3, 8, 3, 2, 1), block(8), block(8)]
    model = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    return randomise_bn(model, torch.Generator().manual_seed(seed))


def ops(path) -> dict[str, int]:
    proto = onnx.load(str(path))
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.parametrize("block, method", [(RepVGGBlock, "reparameterize"), (MobileOneBlock, "fuse")])
def test_convention_blocks_fold_to_their_deploy_form(block, method, tmp_path) -> None:
    model = net(block)
    folded, report = fold_model(model, probe_shape=SHAPE)
    rows = [r for r in report.rows if r.kind.endswith(f".{method}()")]
    assert len(rows) == 3 if block is RepVGGBlock else 2
    assert all(r.max_rel_error < 1e-12 for r in rows)  # float64 proof per folded block
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    result = export(model, input_shape=SHAPE, output=tmp_path / "m.onnx", samples=2)
    counts = ops(result.onnx_path)
    assert "BatchNormalization" not in counts and counts["Conv"] == 3
    assert result.fold_coverage.clean and result.parity.passed
    for cand in result.parity.candidates:
        assert cand.max_rel_err < 1e-5 and cand.top1_agreement == 1.0
    assert model.training is False and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # input untouched


@pytest.mark.parametrize("block", [RepVGGBranches, MobileOneBranches])
def test_blocks_without_a_fold_method_are_reported_and_fail_strict_fold(block, tmp_path, deploy_cli) -> None:
    model = net(block)
    result = export(model, input_shape=SHAPE, output=tmp_path / "m.onnx", samples=2)
    coverage = result.fold_coverage
    parallel = [f for f in coverage.findings if f.kind == "parallel_convs"]
    assert len(parallel) == (3 if block is RepVGGBranches else 2) and not coverage.clean
    graph_nodes = {n.name for n in onnx.load(str(result.onnx_path)).graph.node}
    blocks = ["0", "1", "2"] if block is RepVGGBranches else ["1", "2"]
    for finding, name in zip(parallel, blocks):  # in graph order, naming the ONNX nodes and the block's modules
        assert set(finding.nodes) <= graph_nodes and len(finding.nodes) >= 3
        assert finding.modules[0] == name and all(m.startswith(name + ".") for m in finding.modules[1:])
    branches = {"0": 2, "1": 3, "2": 3} if block is RepVGGBranches else {"1": 4, "2": 4}  # conv3x3, conv1x1, identity
    assert [len(f.nodes) - 1 for f in parallel] == [branches[b] for b in blocks]
    assert ops(result.onnx_path)["Conv"] > 3  # the branches are all still there
    with pytest.raises(GraphCheckError, match="parallel branches") as info:
        export(model, input_shape=SHAPE, output=tmp_path / "strict.onnx", samples=2, strict_fold=True)
    assert info.value.exit_code == 4 and not (tmp_path / "strict.onnx").exists()

    ckpt = tmp_path / "model.pt"
    torch.save(model, ckpt)
    warn = deploy_cli("export", ckpt, "--trust-pickle", "--input-shape", "3x16x16", "-o", tmp_path / "cli.onnx",
                      "--samples", 2)
    assert warn.exit_code == 0, warn.stderr
    assert "fold coverage: WARNING" in warn.stdout and "graph check: clean" not in warn.stdout
    inspected = deploy_cli("inspect", tmp_path / "cli.onnx", "--json")
    assert inspected.exit_code == 0 and "\"kind\": \"parallel_convs\"" in inspected.stdout
    assert "foldable structure(s) left" in inspected.stdout
    run = deploy_cli("export", ckpt, "--trust-pickle", "--input-shape", "3x16x16", "-o", tmp_path / "cli2.onnx",
                     "--samples", 2, "--strict-fold")
    assert run.exit_code == 4
    assert "fold coverage" in run.one_error_line() and "sums parallel branches" in run.one_error_line()
    assert not (tmp_path / "cli2.onnx").exists() and not (tmp_path / "cli2.report.json").exists()


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d in miniature: normalise, then ``drop``, then ``act`` (its forward asserts
    the rank, which torch.fx cannot trace through: the fold must treat it as one call)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4, "BatchNormAct2d takes NCHW"
        return self.act(self.drop(super().forward(x)))


class ActThenNorm(nn.BatchNorm2d):
    """A subclass that does something else (activation before normalising): not splittable."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.act(x))


class ConvNormAct(nn.Module):
    def __init__(self, norm: type[nn.BatchNorm2d]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = norm(6)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)))


def test_conv_then_batchnorm_subclass_fuses_and_keeps_its_activation(tmp_path) -> None:
    torch.manual_seed(0)
    model = randomise_bn(ConvNormAct(BatchNormAct2d), torch.Generator().manual_seed(1))
    folded, report = fold_model(model, probe_shape=SHAPE)
    (row,) = report.rows
    assert row.name == "conv" and row.kind == "Conv2d+BatchNormAct2d (bn, drop, act kept)"
    assert row.max_rel_error < 1e-12
    assert isinstance(folded.bn, PostNorm) and isinstance(folded.bn.act, nn.Hardswish)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=0, atol=1e-5)
    result = export(model, input_shape=SHAPE, output=tmp_path / "m.onnx", samples=2)
    counts = ops(result.onnx_path)
    assert "BatchNormalization" not in counts and counts.get("HardSwish") == 1 and counts["Conv"] == 2
    assert result.parity.passed and result.fold_coverage.clean
    assert result.parity.candidates[-1].max_rel_err < 1e-5


def test_a_batchnorm_subclass_that_is_not_norm_then_children_is_kept(tmp_path) -> None:
    torch.manual_seed(0)
    model = randomise_bn(ConvNormAct(ActThenNorm), torch.Generator().manual_seed(1))
    folded, report = fold_model(model, probe_shape=SHAPE)
    assert report.rows == [] and any(k.startswith("bn: ActThenNorm kept") for k in report.kept)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=0, atol=1e-6)
    result = export(model, input_shape=SHAPE, output=tmp_path / "m.onnx", samples=2)
    assert result.parity.passed
    assert [k.after_op for k in result.fold_coverage.kept] == ["Relu"] and result.fold_coverage.ok


class BrokenReparam(RepVGGBranches):
    def reparameterize(self) -> None:
        raise RuntimeError("kernel shapes disagree")


class VAEStyle(RepVGGBranches):
    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:  # not a fold: it takes arguments
        return mu + torch.exp(0.5 * logvar)


def test_fold_methods_that_fail_or_are_not_folds(tmp_path) -> None:
    from deploy.core.errors import BadInputError

    with pytest.raises(BadInputError, match=r"1\.reparameterize\(\) \(BrokenReparam\) failed \(RuntimeError: kernel "
                                            "shapes disagree\\)") as info:
        fold_model(nn.Sequential(RepVGGBranches(3, 8, 2), BrokenReparam(8, 8)).eval(), probe_shape=SHAPE)
    assert info.value.exit_code == 2
    folded, report = fold_model(nn.Sequential(VAEStyle(3, 8, 2)).eval(), probe_shape=SHAPE)
    assert not any(r.kind.endswith(".reparameterize()") for r in report.rows)
    assert [r.kind for r in report.rows] == ["Conv2d+BatchNorm2d (0.dense.1)", "Conv2d+BatchNorm2d (0.one.1)"]
