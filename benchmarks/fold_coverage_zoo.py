"""Fold coverage of every zoo model: fold, export (dynamo), simplify, then list what is left.

    .venv/bin/python benchmarks/fold_coverage_zoo.py [--arch resnet20 ...]

Seeded random weights with non-trivial BatchNorm statistics; the ResNets at 32x32 (the graph's
structure does not depend on the size) and the SCNets at 128x128 (their calibration branch needs
a 4x4 map in the last stage). One line
per model: the findings (foldable structure left; expected: none) and the BatchNormalization nodes
kept after non-conv ops.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.fold.fold import fold_model
from deploy.models.random_init import randomize_model
from deploy.models.zoo import archs, build_model, zoo_entries
from exporters.onnx import export_onnx_detailed
from exporters.simplify import simplify_onnx
from validators.fold_coverage import check_fold_coverage


def size_of(arch: str) -> int:
    return 128 if arch.startswith("scnet") else 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="only these archs (repeatable)")
    args = parser.parse_args()
    names = args.arch or list(archs())
    for arch, conv, kwargs in zoo_entries(names):
        start = time.perf_counter()
        model = build_model(arch, conv, **kwargs)
        shape = (3, size_of(arch), size_of(arch))
        randomize_model(model, shape, seed=0, batch=2)
        folded, _ = fold_model(model.eval(), probe_shape=shape)
        exported = export_onnx_detailed(folded, shape)
        proto, _ = simplify_onnx(exported.model, shape)
        coverage = check_fold_coverage(proto)
        label = f"{arch} {conv}" + "".join(f" {k}={v}" for k, v in kwargs.items())
        found = "; ".join(f.message for f in coverage.findings) or "none"
        kept = coverage.kept_summary().split(":")[0] if coverage.kept else "none"
        print(f"{label:32} findings: {found} | kept: {kept} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
