"""`deploy bench ARTIFACT`: time a model.onnx, an engine.plan or a model.pt.

bench: model.onnx runs on ONNX Runtime (CPU by default; --provider cuda|tensorrt when
installed), engine.plan on TensorRT, model.pt on PyTorch (loaded and folded as `deploy
export` does; --device cpu|cuda, --dtype, --cuda-graph, --channels-last). The harness is
validators/latency.py; --vs times two artifacts interleaved (A B A B …) and reports the
ratio of medians A/B with a bootstrap 95 % interval (docs/architecture.md "Measuring speed").

This module imports no torch: `deploy bench x.onnx` starts fast. The PyTorch backend
(``deploy.bench.torch_model``, which loads and folds a checkpoint) is imported only when a model.pt
is timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import typer
from rich.table import Table

from deploy.bench.artifacts import artifact_kind, onnx_bench_shape
from deploy.bench.runtime import open_all, runtime_facts
from deploy.commands.bench_profile import profile_command
from deploy.commands.common import MachineOutput, console, finite, machine_output, warn
from deploy.commands.options import BATCH, INPUT_SIZE, JSON
from deploy.commands.printing import RichProgress
from deploy.core.atomic import sha256_file
from deploy.core.environment import versions
from deploy.core.errors import BadInputError
from deploy.core.limits import check_seed
from deploy.core.pathguard import guard_paths
from deploy.core.shapes import parse_input_size
from validators.latency import ABResult, LatencyStats, Warmup, benchmark, interleaved
from validators.runtimes.onnxruntime import ORT_PROVIDERS

if TYPE_CHECKING:
    from deploy.bench.torch_model import TorchBenchOptions

BENCH_FORMAT = "convdeploy-bench/1"
# ---------------------------------------------------------------- plain helpers

def _fmt_ms(v: float) -> str:
    return f"{v:.3f}"


def stats_table(title: str, columns: list[tuple[str, LatencyStats, dict[str, Any]]],
                ab: Optional[ABResult] = None) -> Table:
    """The human summary: one column per artifact."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("")
    for name, _, _ in columns:
        table.add_column(name, justify="right")
    rows = [("min (ms/batch)", lambda s, f: _fmt_ms(s.min_ms)), ("median", lambda s, f: _fmt_ms(s.median_ms)),
            ("mean", lambda s, f: _fmt_ms(s.mean_ms)), ("p90", lambda s, f: _fmt_ms(s.p90_ms)),
            ("p95", lambda s, f: _fmt_ms(s.p95_ms)), ("p99", lambda s, f: _fmt_ms(s.p99_ms)),
            ("max", lambda s, f: _fmt_ms(s.max_ms)), ("throughput (img/s)", lambda s, f: f"{s.throughput_ips:,.1f}"),
            ("CoV", lambda s, f: f"{s.cov * 100:.1f} %" + (" [yellow](> 5 %: noisy)[/]" if s.cov_warning else "")),
            ("timed runs", lambda s, f: str(s.n)), ("warm-up", lambda s, f: f"{s.warmup_runs_done} runs"),
            ("clock", lambda s, f: s.clock), ("device", lambda s, f: str(f.get("device"))),
            ("provider", lambda s, f: str(f.get("provider"))), ("threads", lambda s, f: str(f.get("threads"))),
            ("batch", lambda s, f: str(s.batch)), ("input shape", lambda s, f: "x".join(map(str, f["input_shape"]))),
            ("copies included", lambda s, f: {None: "n/a (CPU)", True: "yes", False: "no"}[f.get("copies_included")])]
    for label, get in rows:
        table.add_row(label, *[get(s, f) for _, s, f in columns])
    if ab is not None:
        table.add_row("[bold]median A/B[/]", f"[bold]{ab.ratio:.3f}[/]",
                      f"95 % CI [{ab.ci_low:.3f}, {ab.ci_high:.3f}]")
    return table


# ---------------------------------------------------------------- commands

def bench(
    artifact: Path = typer.Argument(..., help="model.onnx (ONNX Runtime), engine.plan (TensorRT) or model.pt "
                                    "(PyTorch: loaded and folded as `deploy export` does)."),
    batch: int = BATCH,
    input_size: Optional[str] = INPUT_SIZE,
    warmup: str = typer.Option("10", "--warmup", help="Warm-up: a run count (10) or seconds (2s)."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Timed runs (default: up to 100 or 30 s)."),
    duration: Optional[float] = typer.Option(None, "--duration", callback=finite,
                                  help="Time budget in seconds, warm-up included."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads of ONNX Runtime, or of PyTorch "
                                   "(process-wide) for a model.pt."),
    provider: Optional[str] = typer.Option(None, "--provider", help="cpu | cuda | tensorrt (ONNX Runtime)."),
    as_json: bool = JSON,
    json_file: Optional[Path] = typer.Option(None, "--json-file", metavar="PATH", help="Write the record (every field "
                                             "and raw sample; with --profile the profile, default MODEL.profile.json) "
                                             "to PATH."),
    vs: Optional[Path] = typer.Option(None, "--vs", help="Second artifact, interleaved (A B, B A, …) on the same input."),
    seed: int = typer.Option(0, "--seed", help="Seed of the input and the bootstrap."),
    include_copies: bool = typer.Option(False, "--include-copies", help="TensorRT: time host<->device copies too."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="TensorRT, or PyTorch on --device cuda: replay a "
                                    "captured CUDA graph."),
    backend: str = typer.Option("auto", "--backend", help="Runtime of ARTIFACT: auto (by extension), ort (.onnx), "
                                "trt (.plan) or torch (.pt); --vs OTHER runs on what its extension says."),
    device: str = typer.Option("cpu", "--device", help="PyTorch backend: cpu or cuda (exit 5 without a CUDA GPU)."),
    dtype: str = typer.Option("fp32", "--dtype", help="PyTorch backend: fp32, fp16 or bf16 weights and input."),
    channels_last: bool = typer.Option(False, "--channels-last", help="PyTorch backend: NHWC memory format."),
    profile: bool = typer.Option(False, "--profile", help="ONNX: ONNX Runtime's per-op profile instead of timing "
                                 "(time by op type and by node; JSON to --json, default MODEL.profile.json)."),
    top: int = typer.Option(15, "--top", help="--profile: rows of the op-type and node tables."),
) -> None:
    """Time an artifact (or two, interleaved) and print latency statistics.

    --json prints the record (every field and raw sample, hashes, versions) on stdout; --json-file
    PATH writes it to a file.
    """
    if iters is not None and duration is not None:
        raise BadInputError("give --iters or --duration, not both")
    if duration is not None and duration <= 0:
        raise BadInputError(f"--duration {duration} must be > 0 seconds")
    warm = Warmup.parse(warmup)
    if provider is not None and provider not in ORT_PROVIDERS:
        raise BadInputError(f"--provider {provider}: choose cpu, cuda or tensorrt")
    check_seed(seed)
    size = parse_input_size(input_size)
    paths = [artifact] + ([vs] if vs is not None else [])
    guard_paths(inputs={"the benchmarked artifact": artifact, "the --vs artifact": vs}, outputs={"`json_file`": json_file})
    kinds = [artifact_kind(artifact, backend)] + [artifact_kind(p) for p in paths[1:]]
    if profile:
        _profile(paths, kinds, batch, size, threads, provider, iters, warm, seed, top, as_json, json_file)
        return
    with machine_output(as_json, json_file) as out:
        _time(paths, kinds, out, batch=batch, input_size=size, warm=warm, iters=iters, duration=duration,
              threads=threads, provider=provider, seed=seed, include_copies=include_copies, cuda_graph=cuda_graph,
              device=device, dtype=dtype, channels_last=channels_last)


def _time(paths: list[Path], kinds: list[str], out: MachineOutput, *, batch: int, input_size: Optional[tuple[int, int]],
          warm: Warmup, iters: Optional[int], duration: Optional[float], threads: Optional[int],
          provider: Optional[str], seed: int, include_copies: bool, cuda_graph: bool, device: str, dtype: str,
          channels_last: bool) -> None:
    """Open the runtimes, time them (interleaved for two), print the table and emit the record."""
    torch_opts = _torch_options(kinds, device, dtype, cuda_graph, channels_last, seed)
    runtimes, shapes = open_all(paths, kinds, batch, input_size, provider, threads, include_copies, cuda_graph,
                                torch_opts)
    for rt in {id(r): r for r in runtimes}.values():
        for text in getattr(rt, "warnings", []):
            warn(text)
    x = np.random.default_rng(seed).standard_normal(shapes[0]).astype(np.float32)
    facts = [{**runtime_facts(rt, k, provider, threads, include_copies), "input_shape": list(s)}
             for rt, k, s in zip(runtimes, kinds, shapes)]
    ab: Optional[ABResult] = None
    with RichProgress(transient=True) as progress:
        if len(paths) == 1:
            stats = [benchmark(runtimes[0], x, warmup=warm, iters=iters, duration=duration, progress=progress,
                               description=paths[0].name)]
        else:
            ab = interleaved(runtimes[0], runtimes[1], x, warmup=warm, iters=iters, duration=duration, seed=seed,
                             progress=progress)
            stats = [ab.a, ab.b]
    names = [p.name if len(paths) == 1 else f"{tag}: {p.name}" for tag, p in zip("AB", paths)]
    _print_bench(batch, names, stats, facts, ab)
    if out.wanted:
        out.emit(bench_record(paths, facts, stats, ab, seed=seed, warmup=warm))


def _torch_options(kinds: list[str], device: str, dtype: str, cuda_graph: bool, channels_last: bool,
                   seed: int) -> Optional["TorchBenchOptions"]:
    """The PyTorch backend's options (checked: exit 2, or 5 for a missing GPU), None without a model.pt."""
    if "torch" not in kinds:
        if (device, dtype, channels_last) != ("cpu", "fp32", False):
            raise BadInputError("--device, --dtype and --channels-last apply to the PyTorch backend: bench a model.pt")
        return None
    from deploy.bench.torch_model import TorchBenchOptions  # noqa: PLC0415 - torch: only a model.pt needs it

    opts = TorchBenchOptions(device=device, dtype=dtype, cuda_graph=cuda_graph, channels_last=channels_last,
                             seed=seed)
    opts.check()
    return opts


def _profile(paths: list[Path], kinds: list[str], batch: int, input_size: Optional[tuple[int, int]], threads: Optional[int],
             provider: Optional[str], iters: Optional[int], warm: Warmup, seed: int, top: int,
             as_json: bool, json_file: Optional[Path]) -> None:
    """`--profile`: ONNX Runtime's per-op profile of one model (or two, interleaved) instead of timing."""
    if any(k != "onnx" for k in kinds):
        raise BadInputError("--profile profiles model.onnx files (ONNX Runtime); time other artifacts without it")
    shapes = [onnx_bench_shape(p, batch, input_size) for p in paths]
    if len(set(shapes)) > 1:
        raise BadInputError(f"{paths[0].name} takes {shapes[0]} and {paths[1].name} takes {shapes[1]}: "
                            "--vs compares on the same input; export both at the same input size")
    profile_command(paths, shapes, threads=threads, provider=provider, iters=iters,
                    warmup_runs=warm.runs if warm.runs is not None else 3, seed=seed, top=top, as_json=as_json,
                    json_file=json_file)


def _print_bench(batch: int, names: list[str], stats: list[LatencyStats], facts: list[dict[str, Any]],
                 ab: Optional[ABResult]) -> None:
    console.print(stats_table(f"deploy bench — batch {batch}", list(zip(names, stats, facts)), ab))
    for s, n in zip(stats, names):
        if s.cov_warning:
            warn(f"{n}: coefficient of variation {s.cov * 100:.1f} % > 5 %: the machine is noisy; use more --iters "
                 "or a quieter machine")
    if ab is not None:
        verdict = "faster than" if ab.ci_high < 1 else ("slower than" if ab.ci_low > 1 else "not distinguishable from")
        console.print(f"A/B median ratio {ab.ratio:.3f} (95 % CI {ab.ci_low:.3f}–{ab.ci_high:.3f}): "
                      f"A is {verdict} B", highlight=False)


def bench_record(paths: list[Path], facts: list[dict[str, Any]], stats: list[LatencyStats],
                 ab: Optional[ABResult], *, seed: int, warmup: Warmup) -> dict[str, Any]:
    """The --json report: the table's fields, every raw sample, hashes and versions."""
    entries = [{"artifact": str(p), "artifact_sha256": sha256_file(p), **f, "stats": s.to_dict()}
               for p, f, s in zip(paths, facts, stats)]
    return {"format": BENCH_FORMAT, "seed": seed, "warmup": warmup.describe(), "results": entries,
            "vs": None if ab is None else {k: v for k, v in ab.to_dict().items() if k not in ("a", "b")},
            "versions": versions()}
