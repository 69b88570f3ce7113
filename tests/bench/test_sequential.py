"""A/A-controlled, sequential comparisons (validators/sequential.py) and structure-first verdicts.

No time is asserted (docs/architecture.md): an A/A of one file is never refuted, a model made
3-10x slower on purpose is refuted at one of the first looks (a count of pairs, not of seconds),
and two identical graphs cannot be refuted whatever their timings say.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from torch import nn

from exporters.onnx import export_onnx
from validators.claims import (
    CONFIRMED,
    MACHINE,
    PASS,
    REFUTED,
    MachineProbes,
    RatioMeasure,
    count_subnormals,
    zero_overhead_claim,
)
from validators.graph import check_graph
from validators.runtimes.onnxruntime import OrtRuntime
from validators.sequential import FAIL, FIRST_LOOK, UNDECIDED, NoiseBand, controlled, corrected, decide

SHAPE = (3, 32, 32)
BAND = (0.97, 1.03)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10)).eval()


class HeavyBranch(nn.Module):
    """tiny_net plus a wide 3x3 convolution stack whose output is added in: the same answer, much slower."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()
        torch.manual_seed(1)
        self.heavy = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1),
                                   nn.Conv2d(64, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + 0.0 * self.heavy(x)


@pytest.fixture(scope="module")
def protos() -> dict[str, onnx.ModelProto]:
    return {"tiny": export_onnx(tiny_net(), None, SHAPE, exporter="torchscript"),
            "heavy": export_onnx(HeavyBranch().eval(), None, SHAPE, exporter="torchscript")}


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, *SHAPE)).astype(np.float32)


# ---------------------------------------------------------------- the rule

def test_corrected_interval_and_decisions():
    noise = NoiseBand(1.0, 0.99, 1.01, margin=0.01)
    assert (noise.low, noise.high) == pytest.approx((0.98, 1.02))
    assert corrected(1.0, 1.0, noise) == pytest.approx((1 / 1.02, 1 / 0.98))
    assert decide(0.995, 1.005, noise, BAND) == PASS
    assert decide(1.06, 1.10, noise, BAND) == FAIL
    assert decide(1.02, 1.04, noise, BAND) == UNDECIDED
    assert decide(1.02, 1.04, noise, None) == UNDECIDED  # no band: only "differs from 1" decides
    assert decide(1.05, 1.06, noise, None) == FAIL
    assert decide(0.5, 0.9, noise, (0.0, 1.0)) == PASS  # "faster" with room to spare


# ---------------------------------------------------------------- A/A never refuted

@pytest.mark.parametrize("separate_sessions", [False, True])
def test_aa_of_a_file_against_itself_is_never_refuted(protos, separate_sessions):
    """Many seeds, short budgets: the same file as A, B and B' never fails against the band."""
    rts = [OrtRuntime(protos["tiny"], threads=1, spin=False) for _ in range(3 if separate_sessions else 1)]
    a, b, b2 = (rts * 3)[:3]
    for seed in range(8):
        cr = controlled(a, b, _x(seed), twin=b2, band=BAND, warmup=2, duration=0.12, seed=seed)
        assert cr.status != FAIL, (seed, cr.ab.ratio, cr.ab.ci_low, cr.ab.ci_high, cr.noise)
        assert cr.pairs == cr.aa.a.n == cr.ab.b.n >= 3 and cr.looks[-1].pairs == cr.pairs
        if not separate_sessions:  # one session in the three slots: no difference from 1 is ever established
            assert controlled(a, a, _x(seed), band=None, warmup=1, duration=0.08, seed=seed).status != FAIL


# ---------------------------------------------------------------- a slower model refuted quickly

def test_slower_model_is_refuted_at_an_early_look(protos):
    slow = OrtRuntime(protos["heavy"], threads=1, spin=False)
    fast, fast2 = (OrtRuntime(protos["tiny"], threads=1, spin=False) for _ in range(2))
    cr = controlled(slow, fast, _x(), twin=fast2, band=BAND, warmup=2, duration=60.0)
    assert cr.status == FAIL and cr.stopped == "decisive"
    assert cr.pairs <= 27  # decided at one of the first looks (8, 12, 18, 27 pairs), long before the budget
    assert [k.pairs for k in cr.looks] == [8, 12, 18, 27][: len(cr.looks)] and FIRST_LOOK == 8
    assert cr.ab.ratio > 1.03 and cr.corrected[0] > 1.03

    twin_graph = check_graph(protos["tiny"], SHAPE)
    claim = zero_overhead_claim("1", "zero overhead", "heavy", check_graph(protos["heavy"], SHAPE), twin_graph,
                                parity_passed=True, parity_detail="same outputs", graph_reasons=[],
                                latencies=[RatioMeasure.from_controlled(cr)], band=BAND)
    parts = {p.name: p for p in claim.parts}
    assert claim.verdict == REFUTED  # not structural: the twin differs, and latency may refute too
    assert parts["twin structure"].status == "fail" and parts["latency batch 1"].status == "fail"


# ---------------------------------------------------------------- identical graphs cannot be refuted

@settings(max_examples=60, deadline=None)
@given(ratio=st.floats(0.2, 5.0), half=st.floats(0.0, 0.5), aa_half=st.floats(0.0, 0.2), cov=st.floats(0.0, 0.5))
def test_identical_graphs_cannot_be_refuted(protos, ratio, half, aa_half, cov):
    graph = check_graph(protos["tiny"], SHAPE)
    m = RatioMeasure(batch=64, ratio=ratio, ci_low=ratio * (1 - half), ci_high=ratio * (1 + half), cov_a=cov,
                     cov_b=cov, pairs=7, median_a_ms=ratio, median_b_ms=1.0, aa_ratio=1.0, aa_low=1 - aa_half,
                     aa_high=1 + aa_half, first_half=ratio, second_half=ratio)
    claim = zero_overhead_claim("1", "zero overhead", "twin", graph, check_graph(protos["tiny"], SHAPE),
                                parity_passed=True, parity_detail="ok", graph_reasons=[], latencies=[m], band=BAND,
                                probes=MachineProbes(0, 0))
    assert claim.verdict == CONFIRMED
    (lat,) = [p for p in claim.parts if p.name.startswith("latency")]
    assert lat.status in (PASS, "info", MACHINE)
    if lat.status == MACHINE:
        assert "machine effect worth investigating" in lat.detail and "subnormal float32 weights 0" in lat.detail
        assert "machine effect" in claim.reason and "machine effect" in claim.summary


def test_coc_batch_64_is_a_machine_effect_with_what_was_checked(protos):
    """The published case: 1.046 [1.019, 1.080] over 7 pairs, identical graphs, a quiet A/A."""
    graph = check_graph(protos["tiny"], SHAPE)
    m = RatioMeasure(batch=64, ratio=1.046, ci_low=1.019 + 0.04, ci_high=1.080 + 0.04, cov_a=0.03, cov_b=0.02,
                     pairs=7, median_a_ms=1.0, median_b_ms=1.0, aa_ratio=1.0, aa_low=0.995, aa_high=1.005,
                     first_half=1.09, second_half=1.01)
    claim = zero_overhead_claim("1", "zero overhead", "CoC", graph, graph, parity_passed=True, parity_detail="ok",
                                graph_reasons=[], latencies=[m], band=BAND, probes=MachineProbes(12, 0))
    (lat,) = [p for p in claim.parts if p.name.startswith("latency")]
    assert claim.verdict == CONFIRMED and lat.status == MACHINE
    assert "12 vs the twin's 0 (the candidate has more" in lat.detail
    assert "1.090 over the first half of the rounds, 1.010 over the second" in lat.detail


def test_count_subnormals():
    tiny = np.finfo(np.float32).tiny
    w = np.array([0.0, 1.0, tiny, tiny / 2, -tiny / 4, np.float32(1e-45), 1e-30], dtype=np.float32)
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [7])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.array([tiny / 2], dtype=np.float64), "d")])
    assert count_subnormals(helper.make_model(graph)) == 3  # tiny/2, -tiny/4, 1e-45; float64 is not counted
