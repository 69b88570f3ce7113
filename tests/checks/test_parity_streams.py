"""The parity check's runtimes side by side (validators/runtimes/streams.py) and the thread plan
(deploy/core/threads.py): same verdicts and numbers as one at a time, outcomes in input order,
bounded lead, errors handed back, threads put back."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from deploy.core.threads import ThreadPlan, plan_threads, usable_cpus
from exporters.onnx import export_onnx
from tests.checks.test_parity import SHAPE, conv_weight, make_net, perturb
from validators.parity import check_parity
from validators.runtimes.onnxruntime import OrtRuntime
from validators.runtimes.pytorch import TorchRuntime, torch_threads
from validators.runtimes.streams import SideBySide


class _Probe:
    """A runtime that records which thread ran each input, and how far ahead of the caller it ran."""

    def __init__(self, name: str, concurrent: bool, fail_at: int | None = None) -> None:
        self.name, self.concurrent, self.fail_at = name, concurrent, fail_at
        self.threads: list[str] = []
        self.calls = 0

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        self.calls += 1
        if self.fail_at is not None and int(x[0, 0, 0, 0]) >= self.fail_at:
            raise ValueError(f"{self.name} refuses input {int(x[0, 0, 0, 0])}")
        return {"output": x.reshape(x.shape[0], -1)[:, :2] * 2}


def _inputs(n: int) -> list[np.ndarray]:
    return [np.full((1, 1, 2, 2), i, np.float32) for i in range(n)]


def test_side_by_side_hands_back_every_outcome_in_input_order() -> None:
    threaded, inline = _Probe("threaded", True), _Probe("inline", False)
    runs = SideBySide([threaded, inline], _inputs(10), slots=2, lead=2)
    seen = []
    for index, (a, b) in runs:
        assert a.outputs is not None and b.outputs is not None
        assert a.outputs["output"][0, 0] == b.outputs["output"][0, 0] == 2 * index
        assert threaded.calls <= index + 2  # never more than `lead` inputs ahead of the caller
        seen.append(index)
    assert seen == list(range(10)) and len(runs.seconds) == 2 and min(runs.seconds) > 0
    assert set(inline.threads) == {threading.current_thread().name}  # not concurrent: the caller's thread
    assert set(threaded.threads) == {"parity-threaded"}
    one = _Probe("one slot", True)
    list(SideBySide([one], _inputs(3), slots=1))
    assert set(one.threads) == {threading.current_thread().name}  # one slot: everything in turn, in the caller


def test_side_by_side_errors_are_outcomes_and_a_crashed_shape_is_not_run_again() -> None:
    failing = _Probe("failing", True, fail_at=3)
    outcomes = [first for _, (first, _) in SideBySide([failing, _Probe("ok", True)], _inputs(6), slots=2)]
    assert [o.outputs is not None for o in outcomes[:3]] == [True] * 3
    assert isinstance(outcomes[3].error, ValueError) and all(o.skipped for o in outcomes[4:])
    assert failing.calls == 4  # the same input shape is not run again after it raised


def test_leaving_early_stops_the_streams() -> None:
    runs = SideBySide([_Probe("a", True), _Probe("b", True)], _inputs(50), slots=2, lead=3)
    for index, _ in runs:
        if index == 2:
            break
    assert not [t for t in threading.enumerate() if t.name.startswith("parity-")]


@pytest.fixture(scope="module")
def net_and_exports():
    net = make_net()
    good = export_onnx(net, None, SHAPE, dynamic_hw=True)
    fixed = export_onnx(net, None, SHAPE, exporter="torchscript", dynamic_batch=False, batch_size=1)
    return net, good, perturb(good, conv_weight(good, 1)), fixed


def test_side_by_side_parity_equals_one_at_a_time(net_and_exports) -> None:
    net, good, bad, fixed = net_and_exports
    reports = []
    for slots in (1, 2, 3):
        candidates = [TorchRuntime(net, name="again"), OrtRuntime(good, threads=1, name="good"),
                      OrtRuntime(bad, threads=1, name="bad"), OrtRuntime(fixed, threads=1, name="fixed")]
        with torch_threads(1):
            reports.append(check_parity(TorchRuntime(net), candidates, SHAPE, samples=2, batches=(1, 3), seed=3,
                                        extra_sizes=[(40, 24)], slots=slots))
    assert reports[0].to_dict() == reports[1].to_dict() == reports[2].to_dict()
    by_name = {c.name: c for c in reports[1].candidates}
    assert by_name["good"].passed and not by_name["bad"].passed and by_name["bad"].max_rel_err > 1e-3
    assert not by_name["fixed"].passed and by_name["fixed"].runs == 2  # batch 3 and 40x24 crashed once each
    assert sum(r.startswith("failed to run") for r in by_name["fixed"].reasons) == 2
    split = reports[1].seconds
    assert split is not None and split.slots == 2 and split.reference > 0 and split.comparison > 0
    assert set(split.candidates) == {"again", "good", "bad", "fixed"} and min(split.candidates.values()) > 0
    assert "reference" in split.summary() and "seconds" not in reports[1].to_dict()


def test_a_failing_reference_stops_the_check(net_and_exports) -> None:
    net, good, _, _ = net_and_exports
    with pytest.raises(ValueError, match="refuses input 0"):
        check_parity(_Probe("reference", True, fail_at=0), [OrtRuntime(good, threads=1)], SHAPE, samples=2, slots=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("parity-")]


def test_thread_plan(monkeypatch) -> None:
    assert ThreadPlan(2, 0.0, 2).split(3) == (1, 2)
    assert ThreadPlan(16, 0.0, 16).split(3) == (5, 3)
    assert ThreadPlan(2, 1.0, 1).split(3) == (1, 1) and ThreadPlan(8, None, 8).split(1) == (8, 1)
    plan = plan_threads(window=0.05)
    assert 1 <= plan.free <= plan.cpus == usable_cpus() and "free" in plan.summary()
    assert plan.busy is None or plan.busy >= 0
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert usable_cpus() == 1 and plan_threads(window=0.01) == ThreadPlan(1, None, 1)


def test_torch_threads_are_put_back() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    with torch_threads(None):
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before


def test_a_stream_of_inputs_is_read_a_few_ahead() -> None:
    read: list[int] = []

    def inputs():
        for x in _inputs(12):
            read.append(int(x[0, 0, 0, 0]))
            yield x

    for index, (a, b) in SideBySide([_Probe("a", True), _Probe("b", True)], inputs(), slots=2, lead=2):
        assert a.outputs is not None and b.outputs is not None and a.outputs["output"][0, 0] == 2 * index
        assert len(read) <= index + 3  # the input handed back, and at most `lead` more
    assert read == list(range(12))
