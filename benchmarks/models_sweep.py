"""Every real model: timm and torchvision models as users bring them, through `deploy.export`.

    make test-models          # .venv-models (the CUDA torch build, torchvision, timm), then this
    .venv-models/bin/python benchmarks/models_sweep.py [--only NAME ...] [--table docs/models.md]

For each model (``benchmarks/models_list.py``): seeded random weights with non-trivial BatchNorm
statistics (``deploy.models.random_init.randomize_model``), then ``deploy.export(model,
input_shape=..., fold=True)``; then, independently of convdeploy's own parity step, the written
ONNX file in a fresh ONNX Runtime session against the original module on fresh inputs (batch 2,
another seed); fold coverage (what a fold could still remove: reported, as timm's own
``reparameterize_model`` leaves it too); the node histogram beside ``reparameterize_model`` (timm
models) followed by a plain ``torch.onnx.export`` — never more Conv or BatchNormalization nodes —
and the export's seconds. Writes the table (``--table``) and exits 1 when any model fails.
Not part of `make test`: its environment is a 3 GB download.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import onnxruntime as ort
import torch
from models_list import MODELS, ModelSpec, build
from torch import nn

import deploy
from deploy.core.errors import ConvDeployError
from deploy.models.random_init import randomize_model

#: the independent comparison's bound: max abs error <= rtol * max|reference| on every output, where rtol is
#: RTOL or, when the model's own float32 arithmetic is noisier, NOISE_FACTOR times that noise (the float32
#: model against its float64 self on the same inputs): no float32 graph can be held closer than that
RTOL, NOISE_FACTOR = 1e-4, 4.0


@dataclass
class Row:
    """One model's line of the table."""

    spec: ModelSpec
    ok: bool = False
    failure: str = ""
    outputs: int = 0
    folded: int = 0
    precision: str = ""
    coverage: str = ""
    nodes: Counter = field(default_factory=Counter)
    baseline: Counter = field(default_factory=Counter)
    opset: int = 0
    noise: float = float("nan")
    rtol: float = RTOL
    pipeline_rel: float = float("nan")
    independent_rel: float = float("nan")
    seconds: float = float("nan")
    export_seconds: float = float("nan")


def _leaves(value: object) -> list[torch.Tensor]:
    """The tensors a model returned, in pytree order (dicts in insertion order), by torch's own pytree."""
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def independent_error(model: nn.Module, path: Path, shape: tuple[int, ...], seed: int) -> tuple[float, int]:
    """Max over outputs of max|onnx - torch| / max|torch| on fresh inputs (batch 2), and the output count."""
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = _leaves(model(x))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    if len(got) != len(ref):
        raise AssertionError(f"{len(got)} ONNX outputs for {len(ref)} torch outputs")
    worst = 0.0
    for r, g in zip(ref, got):
        r_np = r.numpy()
        if r_np.shape != g.shape:
            raise AssertionError(f"output shape {g.shape} != torch's {r_np.shape}")
        scale = float(np.abs(r_np).max()) or 1.0
        worst = max(worst, float(np.abs(r_np - g).max()) / scale)
    return worst, len(ref)


def float32_noise(model: nn.Module, shape: tuple[int, ...], seed: int) -> float:
    """max|f32(x) - f64(x)| / max|f64(x)| over the outputs on a seeded batch of 3: the model's own rounding noise."""
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            low = _leaves(model(x))
            high = _leaves(copy.deepcopy(model).double()(x.double()))
    except Exception:  # noqa: BLE001 - a forward that casts does not run in float64: no noise figure
        return float("nan")
    return max(float((lo.double() - hi).abs().max()) / (float(hi.abs().max()) or 1.0) for lo, hi in zip(low, high))


def baseline_histogram(spec: ModelSpec, model: nn.Module, shape: tuple[int, ...]) -> Counter:
    """Nodes of timm's reparameterize_model (timm models) and a plain dynamo export at its default opset."""
    reference = model
    if spec.source == "timm":
        from timm.utils.model import reparameterize_model  # timm: only in the sweep's environment

        reference = reparameterize_model(model)
    x = torch.randn((2, *shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(reference, (x,), None, dynamo=True, verbose=False)
    assert program is not None
    return Counter(n.op_type for n in program.model_proto.graph.node)


def run_one(spec: ModelSpec, workdir: Path, seed: int) -> Row:
    row = Row(spec)
    shape = (3, *spec.size)
    try:
        torch.manual_seed(seed)
        model = build(spec)
        randomize_model(model, shape, seed=seed, batch=2)
        model.eval()
        row.noise = float32_noise(model, shape, seed + 2000)
        row.rtol = max(RTOL, NOISE_FACTOR * row.noise) if row.noise == row.noise else RTOL
        start = time.perf_counter()
        result = deploy.export(model, input_shape=shape, output=workdir / f"{spec.name}.onnx", fold=True, samples=2,
                               seed=seed, rtol=row.rtol)
        row.seconds = time.perf_counter() - start
        row.export_seconds = result.seconds.get("export", float("nan"))
        fold = result.fold
        assert fold is not None
        row.folded, row.precision = len(fold.rows), fold.precision
        coverage = result.fold_coverage
        left = [f"{len(coverage.findings)} left ({', '.join(sorted({f.kind for f in coverage.findings}))})"] \
            if coverage.findings else []
        kept = [f"{len(coverage.kept)} BN kept (after no conv)"] if coverage.kept else []
        row.coverage = ", ".join(left + kept) or "clean"
        row.nodes = Counter(result.graph.op_histogram)
        row.opset = result.graph.opset
        row.pipeline_rel = max(c.max_rel_err for c in result.parity.candidates)
        row.independent_rel, row.outputs = independent_error(model, result.onnx_path, shape, seed + 1000)
        row.baseline = baseline_histogram(spec, model, shape)
        problems = []
        if not row.independent_rel <= row.rtol:
            problems.append(f"independent error {row.independent_rel:.2e} > {row.rtol:.1e}")
        for op in ("Conv", "BatchNormalization"):
            if row.nodes[op] > row.baseline[op]:
                problems.append(f"{row.nodes[op]} {op} nodes, timm's reparameterize_model + export has {row.baseline[op]}")
        row.ok, row.failure = not problems, "; ".join(problems)
    except ConvDeployError as exc:
        row.failure = f"exit {exc.exit_code}: {str(exc)[:400]}"
    except Exception as exc:  # noqa: BLE001 - the sweep reports every model's failure and goes on
        row.failure = f"exit 1 ({type(exc).__name__}): {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        traceback.print_exc()
    return row


def _nodes(counts: Counter) -> str:
    return f"{sum(counts.values())} ({counts['Conv']} Conv, {counts['BatchNormalization']} BN)"


def table(rows: list[Row], seconds: float) -> str:
    passed = [r for r in rows if r.ok]
    measured = [r for r in rows if r.independent_rel == r.independent_rel]
    worst = max(measured, key=lambda r: r.independent_rel, default=None)
    timed = [r for r in rows if r.seconds == r.seconds]
    slowest = max(timed, key=lambda r: r.seconds, default=None)
    lines = [
        "# Real models: the sweep",
        "",
        "Generated by `make test-models` (`benchmarks/models_sweep.py`; the models are in",
        "`benchmarks/models_list.py`): timm and torchvision models with seeded random weights and non-trivial",
        "BatchNorm statistics, each through `deploy.export(model, input_shape=..., fold=True)`, then the",
        "written ONNX file in a fresh ONNX Runtime session against the original module on fresh inputs",
        f"(batch 2; a model passes at max abs error <= rtol x max|output|, rtol = {RTOL:g} or {NOISE_FACTOR:g} times the",
        "model's own float32 noise, its float32 outputs against its float64 self, where that is larger; the",
        "export's parity gate uses the same rtol), fold coverage (what a fold could",
        "still remove, by kind; reported, not a failure), and the node count beside timm's `reparameterize_model`",
        "(timm models) followed by a plain `torch.onnx.export` (a model fails with more Conv or",
        "BatchNormalization nodes than that). Do not edit by hand.",
        "",
        f"**{len(rows)} models: {len(passed)} pass, {len(rows) - len(passed)} fail.**"
        + (f" Largest independent error: {worst.independent_rel:.2e} ({worst.spec.name})." if worst else "")
        + (f" Slowest export: {slowest.seconds:.1f} s ({slowest.spec.name})." if slowest else "")
        + f" Exports: {seconds / 60:.0f} min in all; torch {torch.__version__}, onnxruntime {ort.__version__}.",
        "",
        "| model | source | input | kind | outputs | folded (precision) | fold coverage | nodes: ours | "
        "nodes: reparameterize + export | opset | float32 noise | rtol | independent rel err | seconds (export step) "
        "| result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = "x".join(map(str, r.spec.size))
        folded = f"{r.folded} ({r.precision})" if r.precision else ""
        err = f"{r.independent_rel:.1e}" if r.independent_rel == r.independent_rel else ""
        secs = f"{r.seconds:.1f} ({r.export_seconds:.1f})" if r.seconds == r.seconds else ""
        result = "pass" if r.ok else f"FAIL: {r.failure}".replace("|", "/").replace("\n", " ")
        lines.append(f"| {r.spec.name} | {r.spec.source} | {size} | {r.spec.kind} | {r.outputs or ''} | {folded} | "
                     f"{r.coverage} | {_nodes(r.nodes) if r.nodes else ''} | "
                     f"{_nodes(r.baseline) if r.baseline else ''} | {r.opset or ''} | {r.noise:.1e} | {r.rtol:.1e} | "
                     f"{err} | {secs} | {result} |")
    return "\n".join(lines) + "\n"


def _save(row: Row, path: Path) -> None:
    with path.open("a") as f:
        record = {k.name: getattr(row, k.name) for k in dataclasses.fields(row)}
        record["spec"] = dataclasses.asdict(row.spec)
        record["nodes"], record["baseline"] = dict(row.nodes), dict(row.baseline)
        f.write(json.dumps(record) + "\n")


def _load(paths: list[Path]) -> list[Row]:
    """Rows written with ``--rows`` (shards of one sweep), in the order of ``MODELS``."""
    rows: dict[str, Row] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            d = json.loads(line)
            spec_d = d.pop("spec")
            spec = ModelSpec(**{**spec_d, "size": tuple(spec_d["size"])})
            rows[spec.name] = Row(spec=spec, **{k: Counter(v) if k in ("nodes", "baseline") else v for k, v in d.items()})
    order = [m.name for m in MODELS]
    return sorted(rows.values(), key=lambda r: order.index(r.spec.name) if r.spec.name in order else len(order))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="only these models (repeatable)")
    parser.add_argument("--shard", help="K/N: only every N-th model from the K-th (0-based), to run shards side by side")
    parser.add_argument("--rows", type=Path, help="append each model's row to this JSON-lines file")
    parser.add_argument("--from-rows", type=Path, nargs="+", help="no run: the table of these --rows files")
    parser.add_argument("--table", type=Path, help="write the Markdown table here (docs/models.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.from_rows:
        rows = _load(args.from_rows)
        text = table(rows, sum(r.seconds for r in rows if r.seconds == r.seconds))
    else:
        rows = sweep(args)
        text = table(rows, sum(r.seconds for r in rows if r.seconds == r.seconds))
    if args.table:
        args.table.write_text(text)
    print(text.split("\n\n")[2])
    return 0 if rows and all(r.ok for r in rows) else 1


def sweep(args: argparse.Namespace) -> list[Row]:
    torch.set_num_threads(args.threads)
    specs = [m for m in MODELS if not args.only or m.name in args.only]
    if args.shard:
        k, n = (int(v) for v in args.shard.split("/"))
        specs = specs[k::n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            row = run_one(spec, Path(tmp), args.seed)
            rows.append(row)
            if args.rows:
                _save(row, args.rows)
            status = "pass" if row.ok else f"FAIL {row.failure}"
            print(f"{spec.name:34} {row.seconds:7.1f} s  indep {row.independent_rel:.1e}  {status}", flush=True)
            for f in Path(tmp).iterdir():
                f.unlink()
            gc.collect()
    return rows


if __name__ == "__main__":
    sys.exit(main())
