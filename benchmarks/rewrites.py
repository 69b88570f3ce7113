"""What the deploy rewrites buy: latency ratios against plain ResNet-50 with and without them.

For SPConv-ResNet-50 at alpha = 1/2, 1/4, 1/8, IC-ResNet-50 and SCNet-50 (seeded random
weights, non-trivial BN statistics) this exports each model twice through the export
pipeline (``deploy.pipeline.export.run_export``: fold, ONNX, onnxsim, graph checks, parity), with
the rewrites (the default) and without (``rewrite=False``), plus plain ResNet-50 once. Then,
at every batch size, in one process, it times each export against plain ResNet-50
interleaved (A B, B A, ...; ``validators.latency.interleaved``) on ONNX Runtime CPU with one
intra-op thread and prints the ratio of medians with its bootstrap 95 % interval, next to
the MAC ratio (the floor a runtime without any overhead would reach) and the node counts
of the two exports. ``--profile`` adds ONNX Runtime's per-op profile of each rewritten
model against plain ResNet-50 (``validators.profile``). Never asserts a time.

    .venv/bin/python benchmarks/rewrites.py             # 224x224, batch 1 and 64 (~20 min, quiet machine)
    .venv/bin/python benchmarks/rewrites.py --quick     # 128x128, batch 1 and 8, short budgets (noisy)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.load.checkpoint import save_checkpoint  # noqa: E402
from deploy.load.source import ModelSource  # noqa: E402
from deploy.models.complexity import count_macs  # noqa: E402
from deploy.models.random_init import randomize_model  # noqa: E402
from deploy.models.zoo import build_model  # noqa: E402
from deploy.pipeline.export import run_export  # noqa: E402
from deploy.pipeline.options import ExportOptions  # noqa: E402
from exporters.simplify import graph_diff  # noqa: E402
from validators.latency import interleaved  # noqa: E402
from validators.profile import profile_models  # noqa: E402
from validators.runtimes.onnxruntime import OrtRuntime  # noqa: E402


@dataclass(frozen=True)
class Model:
    key: str
    arch: str
    conv: str
    kwargs: tuple[tuple[str, float], ...] = ()
    target_b1: float | None = None  # the ratio the rewrites aim at (1 thread, ONNX Runtime CPU)
    target_big: float | None = None


MODELS = (
    Model("SPConv α=1/2", "resnet50", "sp", (("ratio", 0.5),), 0.73, 0.77),
    Model("SPConv α=1/4", "resnet50", "sp", (("ratio", 0.25),)),
    Model("SPConv α=1/8", "resnet50", "sp", (("ratio", 0.125),)),
    Model("IC", "resnet50", "ic", (), 1.06, 1.08),
    Model("SCNet-50", "scnet50", "sc", (), 0.98, 0.98),
)
BASELINE = Model("ResNet-50", "resnet50", "plain")


def _checkpoint(model: Model, size: int, out: Path) -> tuple[Path, int]:
    """A seeded zoo checkpoint at ``size`` and its MACs (training form, Conv + Linear)."""
    net = build_model(model.arch, model.conv, **dict(model.kwargs))
    net.input_shape = (3, size, size)
    randomize_model(net, (3, size, size), seed=0, batch=2)
    net.eval()
    path = out / f"{model.arch}_{model.conv}{''.join(f'_{k}{v}' for k, v in model.kwargs)}_{size}.pt"
    save_checkpoint(net, path, meta={"created_by": "benchmarks/rewrites.py"})
    return path, count_macs(net, (3, size, size))


def _export(ckpt: Path, out: Path, rewrite: bool) -> Path:
    opts = ExportOptions(source=ModelSource(ckpt), output=out, rewrite=rewrite, compare_rewrites=False, samples=1)
    return run_export(opts).onnx_path


def _ratio(a: Path, b: Path, x: np.ndarray, threads: int, seconds: float) -> tuple[float, float, float]:
    ab = interleaved(OrtRuntime(a, threads=threads, spin=False), OrtRuntime(b, threads=threads, spin=False), x,
                     warmup=max(2.0, seconds / 10), duration=seconds)
    return ab.ratio, ab.ci_low, ab.ci_high


def _fmt(r: tuple[float, float, float] | None) -> str:
    return "—" if r is None else f"{r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]"


def _profile(rewritten: Path, plain: Path, x: np.ndarray, threads: int, top: int) -> str:
    """The op types where the rewritten model spends more than plain ResNet-50 (ms per run, % of plain)."""
    mine, base = profile_models([rewritten, plain], x, threads=threads, runs=5, warmup=2)
    ops = {o.op for o in mine.by_op} | {o.op for o in base.by_op}
    rows = sorted(((op, mine.op_ms(op), base.op_ms(op)) for op in ops), key=lambda r: -(r[1] - r[2]))
    lines = [f"    {op:<22} {m:9.2f} ms vs {b:9.2f} ms  ({100 * (m - b) / base.kernel_ms:+.1f} % of plain)"
             for op, m, b in rows[:top]]
    return "\n".join([f"    all kernels {mine.kernel_ms:.2f} ms vs {base.kernel_ms:.2f} ms"] + lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128x128, batch 1 and 8, 3 s per ratio (a smoke run)")
    ap.add_argument("--size", type=int, default=None, help="input height = width (default 224; quick 128)")
    ap.add_argument("--batch", type=int, action="append", default=None, help="batch sizes (default 1 and 64)")
    ap.add_argument("--seconds", type=float, default=None, help="budget per ratio at batch 1 (default 15; quick 3);"
                    " larger batches get 4x")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--profile", action="store_true", help="per-op profile of each rewritten model vs ResNet-50")
    ap.add_argument("--out", type=Path, default=None, help="keep checkpoints, exports and results.json here")
    args = ap.parse_args()
    size = args.size or (128 if args.quick else 224)
    batches = args.batch or ([1, 8] if args.quick else [1, 64])
    seconds = args.seconds or (3.0 if args.quick else 15.0)

    with tempfile.TemporaryDirectory(prefix="convdeploy-rewrites-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        ckpt, base_macs = _checkpoint(BASELINE, size, out)
        plain = _export(ckpt, out / "resnet50_plain.onnx", rewrite=True)
        exports: dict[str, dict[str, object]] = {}
        for m in MODELS:
            print(f"exporting {m.key} …", flush=True)
            ckpt, macs = _checkpoint(m, size, out)
            stem = ckpt.stem
            with_rw, without = (_export(ckpt, out / f"{stem}_{tag}.onnx", rewrite=rw)
                                for tag, rw in (("rewrite", True), ("norewrite", False)))
            diff = graph_diff(onnx.load(str(without)), onnx.load(str(with_rw)))
            exports[m.key] = {"model": m, "macs": macs / base_macs, "with": with_rw, "without": without, "diff": diff}
        print(f"exported in {time.perf_counter() - start:.0f} s; timing {size}x{size}, threads={args.threads}, "
              f"batches {batches}", flush=True)
        results: dict[str, dict[int, dict[str, tuple[float, float, float]]]] = {k: {} for k in exports}
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            budget = seconds if batch == 1 else 4 * seconds
            for key, e in exports.items():
                results[key][batch] = {tag: _ratio(e[tag], plain, x, args.threads, budget)  # type: ignore[arg-type]
                                       for tag in ("without", "with")}
                print(f"  b={batch:<3} {key:<13} without {_fmt(results[key][batch]['without'])}  "
                      f"with {_fmt(results[key][batch]['with'])}", flush=True)
        _print_table(exports, results, batches, size, args.threads)
        if args.profile:
            x = np.random.default_rng(0).standard_normal((batches[-1], 3, size, size)).astype(np.float32)
            for key, e in exports.items():
                print(f"\nper-op profile, {key} (rewritten) vs ResNet-50, batch {batches[-1]}:")
                print(_profile(e["with"], plain, x, args.threads, top=8))  # type: ignore[arg-type]
        if args.out:
            _write_json(args.out / "results.json", exports, results, size, args.threads)
    return 0


def _print_table(exports: dict[str, dict[str, object]], results: dict[str, dict[int, dict[str, tuple]]],
                 batches: list[int], size: int, threads: int) -> None:
    """A Markdown table ready for docs/rewrites.md."""
    print(f"\nLatency / plain ResNet-50 (median ratio [95 % CI]; ONNX Runtime CPU, {threads} thread(s), "
          f"{size}x{size}, interleaved):\n")
    cols = [f"b={b} {tag}" for b in batches for tag in ("without rewrites", "with rewrites")]
    print("| model | MAC ratio | " + " | ".join(cols) + " | target b=1 / b=64 | ONNX nodes without → with |")
    print("|---" * (len(cols) + 4) + "|")
    for key, e in exports.items():
        m: Model = e["model"]  # type: ignore[assignment]
        cells = [_fmt(results[key][b][tag]) for b in batches for tag in ("without", "with")]
        target = f"≤ {m.target_b1} / ≤ {m.target_big}" if m.target_b1 else "—"
        diff = e["diff"]
        print(f"| {key} | {e['macs']:.3f} | " + " | ".join(cells) +
              f" | {target} | {diff.nodes_before} → {diff.nodes_after} |")  # type: ignore[attr-defined]


def _write_json(path: Path, exports: dict[str, dict[str, object]], results: dict[str, dict[int, dict[str, tuple]]],
                size: int, threads: int) -> None:
    doc = {"input_size": size, "threads": threads, "models": {
        key: {"mac_ratio": e["macs"], "nodes": e["diff"].to_dict(),  # type: ignore[attr-defined]
              "ratios": {str(b): {tag: list(r) for tag, r in by.items()} for b, by in results[key].items()}}
        for key, e in exports.items()}}
    path.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
