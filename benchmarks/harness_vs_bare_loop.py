"""Is the harness honest? Its median vs a bare `session.run` loop timed with perf_counter.

Exports a standard ResNet from the zoo to ONNX, then in one process alternates blocks
of (a) ``validators.latency.benchmark`` on ``OrtRuntime`` and (b) a bare loop

    t0 = time.perf_counter(); session.run(None, {name: x}); t1 = time.perf_counter()

on the very same ``InferenceSession`` and input, block order A B, B A, … so drift
cancels. Prints both medians, their ratio with a bootstrap 95 % interval, and whether
they agree within 5 %. Never asserts a time.

    .venv/bin/python benchmarks/harness_vs_bare_loop.py --arch resnet18 --size 112 --batch 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from validators.latency import LatencyStats, benchmark, bootstrap_ratio  # noqa: E402
from validators.runtimes.onnxruntime import OrtRuntime  # noqa: E402


def export(arch: str, size: int, path: Path) -> Path:
    import torch

    from deploy.models.zoo import build_model

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter's notice

    model = build_model(arch).eval()
    torch.onnx.export(model, torch.randn(1, 3, size, size), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def bare_loop(session, name: str, x: np.ndarray, iters: int) -> list[float]:
    """The reference: nothing but session.run between two perf_counter reads (ms)."""
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=300, help="blocks per side, alternating")
    ap.add_argument("--iters", type=int, default=2, help="timed runs per block (small: load shifts hit both sides)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = export(args.arch, args.size, Path(tmp) / f"{args.arch}.onnx")
        rt = OrtRuntime(path, threads=args.threads)
        session, name = rt.session, rt.input_name
        x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
        for _ in range(5):  # common warm-up
            session.run(None, {name: x})
        harness: list[float] = []
        bare: list[float] = []
        t_start = time.perf_counter()
        for block in range(args.blocks):
            first_harness = block % 2 == 0
            for side in ((0, 1) if first_harness else (1, 0)):
                if side == 0:
                    harness += benchmark(rt, x, warmup=0, iters=args.iters).samples_ms
                else:
                    bare += bare_loop(session, name, x, args.iters)
        wall = time.perf_counter() - t_start

    h, b = LatencyStats.from_samples(harness, args.batch), LatencyStats.from_samples(bare, args.batch)
    ratio, lo, hi = bootstrap_ratio(harness, bare, n_boot=4000, seed=0)
    print(f"{args.arch} {args.size}x{args.size} batch {args.batch}, {args.blocks} blocks x {args.iters} runs per side, "
          f"threads={rt.describe()['threads']}, {wall:.1f} s")
    print(f"harness   median {h.median_ms:9.3f} ms  (min {h.min_ms:.3f}, p90 {h.p90_ms:.3f}, CoV {h.cov * 100:.1f} %)")
    print(f"bare loop median {b.median_ms:9.3f} ms  (min {b.min_ms:.3f}, p90 {b.p90_ms:.3f}, CoV {b.cov * 100:.1f} %)")
    if 0.95 <= lo and hi <= 1.05:
        verdict = "agree within 5 % (the whole interval is inside 0.95-1.05)"
    elif lo <= 1.0 <= hi:
        verdict = "no difference detected, but the machine is too noisy to bound it by 5 %: rerun on a quieter one"
    else:
        verdict = f"DIFFER: the harness reads {abs(ratio - 1) * 100:.1f} % {'low' if ratio < 1 else 'high'}"
    print(f"harness / bare = {ratio:.4f}  (95 % CI {lo:.4f}-{hi:.4f}): {verdict}")
    print(f"min-to-min ratio {h.min_ms / b.min_ms:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
