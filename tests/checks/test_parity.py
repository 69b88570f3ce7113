"""validators/parity.py + runtimes.py: metrics, tolerances, parity reports, first diverging layer."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from deploy.core.errors import BackendUnavailableError, BadInputError, ParityError
from deploy.core.metrics import Tolerance, compare
from exporters.onnx import export_onnx
from exporters.simplify import simplify_onnx
from validators.divergence import locate_divergence
from validators.parity import check_parity, first_divergence, seeded_inputs
from validators.runtimes.onnxruntime import OrtRuntime
from validators.runtimes.pytorch import TorchRuntime

SHAPE = (3, 32, 32)


class Block(nn.Module):
    """Residual block with in-place ReLU reused twice (exercises multi-call and in-place hooks)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        out += x
        return self.relu(out)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layer1(self.stem(x))), 1))


def make_net() -> nn.Module:
    torch.manual_seed(0)
    net = Net()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return make_net()


@pytest.fixture(scope="module")
def exports(net: nn.Module) -> dict[str, onnx.ModelProto]:
    return {e: export_onnx(net, None, SHAPE, exporter=e) for e in ("dynamo", "torchscript")}


def perturb(proto: onnx.ModelProto, weight_name: str, delta: float = 1.0) -> onnx.ModelProto:
    """A copy of ``proto`` with one element of one initializer changed."""
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    init = next(i for i in bad.graph.initializer if i.name == weight_name)
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[7] += delta
    init.CopyFrom(onnx.numpy_helper.from_array(arr, weight_name))
    return bad


def conv_weight(proto: onnx.ModelProto, index: int) -> str:
    return [n for n in proto.graph.node if n.op_type == "Conv"][index].input[1]


def test_compare_metrics_by_hand() -> None:
    ref = np.array([[1.0, 2.0, 4.0], [3.0, 2.0, 1.0]], np.float32)
    out = np.array([[1.0, 2.0, 4.5], [3.0, 3.5, 1.0]], np.float32)
    m = compare(ref, out)
    assert m["max_abs_err"] == 1.5 and m["max_ref"] == 4.0 and m["max_rel_err"] == 1.5 / 4.0
    cos0 = (1 + 4 + 18) / (math.sqrt(21) * math.sqrt(1 + 4 + 20.25))
    cos1 = (9 + 7 + 1) / (math.sqrt(14) * math.sqrt(9 + 12.25 + 1))
    assert m["min_cosine"] == pytest.approx(min(cos0, cos1), abs=1e-12)
    assert m["top1_agreement"] == 0.5  # row 1: argmax 0 -> 1
    assert compare(ref, ref)["max_abs_err"] == 0.0 and compare(ref, ref)["min_cosine"] == pytest.approx(1.0)
    assert math.isinf(compare(ref, np.full_like(ref, np.nan))["max_abs_err"])
    with pytest.raises(ParityError, match="shapes differ"):
        compare(ref, ref[:1])


def test_tolerances() -> None:
    fp32, fp16 = Tolerance(), Tolerance.for_precision("fp16")
    assert (fp32.rtol, fp32.atol, fp32.min_top1) == (1e-4, 0.0, 1.0)
    assert (fp16.rtol, fp16.min_top1) == (1e-2, 0.99)
    metrics = {"max_abs_err": 5e-4, "max_ref": 4.0, "top1_agreement": 1.0}
    assert fp32.violations(metrics) == ["max abs error 0.0005 > 0.0004 (= 0 + 0.0001 * max|ref| 4)"]
    assert fp16.violations(metrics) == []
    assert fp16.violations({**metrics, "top1_agreement": 0.98}) == ["top-1 agreement 98.0 % < 99.0 %"]
    with pytest.raises(BadInputError):
        Tolerance.for_precision("int3")


def test_seeded_inputs_are_reproducible() -> None:
    a, b = seeded_inputs(SHAPE, (1, 3), 2, seed=4), seeded_inputs(SHAPE, (1, 3), 2, seed=4)
    assert [x.shape for x in a] == [(1, *SHAPE)] * 2 + [(3, *SHAPE)] * 2
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[0], seeded_inputs(SHAPE, (1,), 1, 5)[0])


def test_parity_passes_for_good_exports(net: nn.Module, exports: dict) -> None:
    cands = [OrtRuntime(exports["dynamo"], name="ort-dynamo"), OrtRuntime(exports["torchscript"], threads=1, name="ort-ts")]
    rep = check_parity(TorchRuntime(net), cands, SHAPE, samples=3, batches=(1, 3), seed=0)
    assert rep.passed, rep.summary()
    for c in rep.candidates:
        assert c.runs == 6 and c.top1_agreement == 1.0 and c.min_cosine > 0.999999
        assert 0 < c.max_abs_err and c.max_rel_err < 1e-5
    d = rep.to_dict()
    assert d["passed"] and d["batches"] == (1, 3) and d["tolerance"]["rtol"] == 1e-4
    assert d["candidates"][1]["describe"]["threads"] == 1 and d["reference_describe"]["runtime"] == "torch"
    rep.raise_if_failed()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("conv_index, expected", [(0, "stem.0"), (1, "layer1.0.conv1"), (4, "layer1.1.conv2")])
def test_perturbed_conv_fails_parity_and_is_named(net: nn.Module, exports: dict, exporter: str,
                                                  conv_index: int, expected: str) -> None:
    proto = exports[exporter]
    bad = perturb(proto, conv_weight(proto, conv_index))
    rep = check_parity(TorchRuntime(net), [OrtRuntime(bad)], SHAPE, samples=2, batches=(1, 3))
    assert not rep.passed and rep.candidates[0].max_rel_err > 1e-3
    assert rep.candidates[0].reasons[0].startswith("output 'output': max abs error")  # names the output
    x = seeded_inputs(SHAPE, (1,), 1, seed=0)[0]
    assert first_divergence(net, bad, x) == expected
    assert first_divergence(net, proto, x) is None
    rep.first_divergence = first_divergence(net, bad, x)
    with pytest.raises(ParityError, match=f"first diverging layer: {expected}") as info:
        rep.raise_if_failed()
    assert info.value.exit_code == 3


def test_divergence_details_and_fallbacks(net: nn.Module, exports: dict) -> None:
    x = seeded_inputs(SHAPE, (1,), 1, seed=1)[0]
    bad = perturb(exports["dynamo"], conv_weight(exports["dynamo"], 1))
    d = locate_divergence(net, bad, x, Tolerance())
    # dynamo fused bn1 into conv1: the Conv node belongs to bn1's scope, its weight names conv1
    assert (d.module, d.compared_module, d.module_type, d.method) == ("layer1.0.conv1", "layer1.0.bn1", "Conv2d", "module scopes")
    assert d.onnx_op == "Conv" and d.max_abs_err > d.bound and "layer1.0.conv1 [Conv2d]" in d.describe()
    # onnxsim drops node metadata; simplify_onnx carries it back, so scopes still work
    simp, res = simplify_onnx(bad, SHAPE)
    assert first_divergence(net, simp, x) == "layer1.0.conv1"
    # with no scope information at all the search matches tensors by value
    anon = onnx.ModelProto()
    anon.CopyFrom(bad)
    for i, node in enumerate(anon.graph.node):
        del node.metadata_props[:]
        node.name = f"n{i}"
    d2 = locate_divergence(net, anon, x, Tolerance())
    assert d2.module == "layer1.0.conv1" and d2.method.startswith("values")
    assert locate_divergence(net, exports["dynamo"], x, Tolerance()) is None


def test_crashing_candidate_is_reported(net: nn.Module) -> None:
    fixed = export_onnx(net, None, SHAPE, exporter="torchscript", dynamic_batch=False, batch_size=1)
    rep = check_parity(TorchRuntime(net), [OrtRuntime(fixed)], SHAPE, samples=2, batches=(1, 3))
    cand = rep.candidates[0]
    assert not rep.passed and cand.runs == 2  # batch 1 ran twice, batch 3 crashed once and was skipped
    assert any(r.startswith("failed to run at batch 3") for r in cand.reasons)


def test_runtimes_errors_and_describe(net: nn.Module, exports: dict, tmp_path) -> None:
    for provider, ort_name in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if ort_name in ort.get_available_providers():
            continue
        with pytest.raises(BackendUnavailableError) as info:
            OrtRuntime(exports["torchscript"], provider=provider)
        assert info.value.exit_code == 5 and ort_name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BadInputError, match="unknown provider"):
        OrtRuntime(exports["torchscript"], provider="tpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(BadInputError, match="cannot load"):
        OrtRuntime(junk)
    with pytest.raises(BadInputError, match="does not exist"):
        OrtRuntime(tmp_path / "missing.onnx")
    with pytest.raises(BadInputError, match="training mode"):
        TorchRuntime(make_net().train())
    desc = OrtRuntime(exports["torchscript"], threads=2).describe()
    assert desc["provider"] == "CPUExecutionProvider" and desc["threads"] == 2 and "onnxruntime" in desc["versions"]
    tdesc = TorchRuntime(net).describe()
    assert tdesc["device"] == "cpu" and tdesc["versions"]["torch"] == torch.__version__
    with pytest.raises(BadInputError, match="4 dimensions"):
        TorchRuntime(net).run(np.zeros(SHAPE, np.float32))


class _Named:
    """A runtime returning fixed outputs under given names (the gate's pairing rules alone)."""

    def __init__(self, **outputs: np.ndarray) -> None:
        self.outputs, self.name = outputs, "named"

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[: x.shape[0]] for k, v in self.outputs.items()}


def test_a_single_output_pairs_whatever_its_name_several_pair_by_name() -> None:
    logits = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    one = check_parity(_Named(output=logits), [_Named(logits=logits)], (3, 1, 1), samples=1, batches=(3,))
    assert one.passed and one.candidates[0].outputs[0].name == "output"
    two = check_parity(_Named(a=logits, b=logits), [_Named(a=logits, c=logits)], (3, 1, 1), samples=1, batches=(3,))
    assert not two.passed and "outputs differ" in two.candidates[0].reasons[0]
