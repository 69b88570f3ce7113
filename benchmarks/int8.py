"""INT8 against fp32 on ONNX Runtime CPU: latency ratio of each target's Q/DQ file, and the file sizes.

ResNet-50 and SPConv-ResNet-50 (α = 1/2) from the zoo with seeded weights, exported folded at 224x224,
quantized for ``--target tensorrt`` (symmetric int8) and ``--target cpu`` (unsigned activations) with
MinMax ranges; each INT8 file is timed interleaved against its fp32 file (``validators.latency.interleaved``,
A B / B A pairs, the ratio of medians with its bootstrap 95 % interval) at batch 1 and 32, one thread.
Speed does not depend on what the ranges were fitted to, so calibration uses 32 seeded random images
here; accuracy is `deploy quantize`'s gate, on real images (docs/int8.md).

    .venv/bin/python benchmarks/int8.py [--models resnet50:plain,resnet50:sp] [--duration 20] [--batches 1,32]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

import deploy
from deploy.core.environment import cpu_name
from deploy.load.checkpoint import save_checkpoint
from deploy.models.random_init import random_model
from deploy.quantize.run import quantize_ungated
from validators.latency import interleaved
from validators.runtimes.onnxruntime import OrtRuntime


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _files(arch: str, conv: str, tmp: Path) -> dict[str, Path]:
    ckpt = tmp / f"{arch}-{conv}.pt"
    options = {"ratio": 0.5} if conv == "sp" else {}
    save_checkpoint(random_model(arch, conv, seed=0, **options), ckpt)
    fp32 = tmp / f"{arch}-{conv}.onnx"
    deploy.export(ckpt, output=fp32, samples=1, compare_rewrites=False)
    calib = tmp / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32))
    files = {"fp32": fp32}
    for target in ("tensorrt", "cpu"):
        files[target] = quantize_ungated(fp32, str(calib), tmp / f"{arch}-{conv}.int8-{target}.onnx", target)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50:plain,resnet50:sp")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of interleaved pairs per ratio")
    args = parser.parse_args()
    print(f"{cpu_name()} ({platform.machine()}), onnxruntime {ort.__version__}, 1 thread")
    print("| model | target | fp32 MB | int8 MB | batch | fp32 ms | int8 ms | int8/fp32 [95 % CI] | pairs |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="int8-bench.") as tmp:
        for spec in args.models.split(","):
            arch, conv = spec.split(":")
            files = _files(arch, conv, Path(tmp))
            fp32 = OrtRuntime(str(files["fp32"]), threads=1)
            for target in ("tensorrt", "cpu"):
                int8 = OrtRuntime(str(files[target]), threads=1)
                for batch in (int(b) for b in args.batches.split(",")):
                    x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224)).astype(np.float32)
                    r = interleaved(int8, fp32, x, warmup=3, duration=args.duration)
                    print(f"| {arch} {conv} | {target} | {_size(files['fp32']) / 1e6:.1f} | {_size(files[target]) / 1e6:.1f}"
                          f" | {batch} | {r.b.median_ms:.1f} | {r.a.median_ms:.1f} | {r.ratio:.3f} [{r.ci_low:.3f}, "
                          f"{r.ci_high:.3f}] | {len(r.a.samples_ms)} |", flush=True)


if __name__ == "__main__":
    main()
