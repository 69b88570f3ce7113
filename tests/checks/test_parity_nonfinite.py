"""Parity that no NaN or inf can blind (deploy/core/metrics.py, validators/parity.py).

Non-finite values must sit where the reference has the very same value; bounds, errors,
margins and cosines come from the finite values; a row pointing away from the reference never
passes. End to end: a model whose logits carry a -inf column, its ONNX head tampered with,
is exit 3 from `deploy validate` (it read "verdict ok" before).
"""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from deploy.core.metrics import Tolerance, compare, decisive_top1, top1_margins
from tests.helpers import MaskedLogits

INF = math.inf


def test_nonfinite_values_must_match_exactly() -> None:
    ref = np.array([[1.0, -INF, 3.0], [2.0, -INF, 0.5]])
    assert compare(ref, ref.copy())["nonfinite_mismatch"] == 0
    assert compare(ref, ref.copy())["max_abs_err"] == 0.0 and compare(ref, ref)["max_ref"] == 3.0
    for bad in (np.array([[1.0, INF, 3.0], [2.0, -INF, 0.5]]),  # the other sign
                np.array([[1.0, -1e9, 3.0], [2.0, -INF, 0.5]]),  # a finite value where -inf belongs
                np.array([[1.0, -INF, np.nan], [2.0, -INF, 0.5]])):  # NaN where a finite value belongs
        m = compare(ref, bad)
        assert m["nonfinite_mismatch"] == 1 and math.isinf(m["max_abs_err"])
        assert "NaN/inf" in Tolerance().violations(m)[0]
    nan_ref = np.array([[np.nan, 1.0]])
    assert compare(nan_ref, nan_ref.copy())["nonfinite_mismatch"] == 0  # NaN where NaN


def test_finite_values_are_judged_beside_an_inf() -> None:
    """The tampered head of the hostile report: finite logits off by 3.2 beside a matching -inf."""
    ref = np.array([[1.0, -INF, 3.0, 0.2]])
    out = np.array([[-2.2, -INF, 0.1, 0.4]])
    m = compare(ref, out)
    assert m["nonfinite_mismatch"] == 0 and m["max_abs_err"] == pytest.approx(3.2) and m["max_ref"] == 3.0
    assert m["min_cosine"] < 0
    reasons = Tolerance().violations(m)
    assert any(r.startswith("max abs error 3.2") for r in reasons) and any("min cosine" in r for r in reasons)


def test_margins_and_near_ties_use_finite_logits() -> None:
    rows = np.array([[5.0, -INF, 3.0], [INF, 1.0, 0.0], [2.0, 2.0 + 1e-9, -INF]])
    assert top1_margins(rows).tolist() == pytest.approx([2.0, INF, 1e-9])
    agree, counted = decisive_top1(rows, rows, margin=1e-6)
    assert (agree, counted) == (2, 2)  # the third row is a near-tie, the first two count


def test_cosine_never_reads_ok_in_opposite_direction() -> None:
    ref = np.array([[1.0, 2.0, 3.0]])
    m = compare(ref, -ref)
    assert m["min_cosine"] == pytest.approx(-1.0)
    assert Tolerance(atol=100.0).violations(m, check_top1=False) == ["min cosine -1 < 0 (a row points away from the reference)"]


def test_validate_fails_a_tampered_head_beside_an_inf(deploy_cli, tmp_path) -> None:
    torch.manual_seed(0)
    model = MaskedLogits().eval()
    ckpt = tmp_path / "masked.pt"
    torch.save(model, ckpt)
    good = tmp_path / "masked.onnx"
    run = deploy_cli("export", ckpt, "--trust-pickle", "--input-shape", "3x16x16", "-o", good, "--samples", 2)
    assert run.exit_code == 0, run.stderr  # the matching -inf column passes
    proto = onnx.load(str(good))
    weight = next(t for t in proto.graph.initializer if numpy_helper.to_array(t).shape == (5, 8))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * -3 + 1, weight.name))
    bad = tmp_path / "tampered.onnx"
    onnx.save(proto, str(bad))
    run = deploy_cli("validate", ckpt, bad, "--trust-pickle", "--input-shape", "3x16x16", "--samples", 2)
    assert run.exit_code == 3, run.stdout + run.stderr
    line = run.one_error_line()
    assert re.search(r"parity failed for onnxruntime-cpu vs [\w-]+: output '\w+': max abs error", line), line
    assert "ok" not in run.stdout.split("onnxruntime-cpu")[1].splitlines()[0]
