"""`deploy bench ARTIFACT` and `deploy build MODEL.onnx -o engine.plan`.

bench: model.onnx runs on ONNX Runtime (CPU by default; --provider cuda|tensorrt when
installed), engine.plan on TensorRT. The harness is validators/latency.py; --vs times
two artifacts interleaved (A B A B …) and reports the ratio of medians A/B with a
bootstrap 95 % interval (docs/architecture.md "Measuring speed").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.table import Table

from deploy.atomic import check_output_path, sha256_file, write_json_atomic
from deploy.commands.bench_profile import profile_command
from deploy.commands.common import console
from deploy.environment import host_device, versions
from deploy.errors import BadInputError
from exporters.tensorrt import build_engine, compute_profile, onnx_input, validate_build_options
from validators.latency import ABResult, LatencyStats, Warmup, benchmark, interleaved
from validators.runtimes import ORT_PROVIDERS, OrtRuntime
from validators.trt_env import ENGINE_SUFFIXES, check_batch_in_profile, load_engine_metadata, require_tensorrt
from validators.trt_runtime import TensorRTRuntime

BENCH_FORMAT = "convdeploy-bench/1"


# ---------------------------------------------------------------- plain helpers

def artifact_kind(path: Path) -> str:
    """"onnx" or "engine"; BadInputError for a missing file or another extension."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        kind = "onnx"
    elif suffix in ENGINE_SUFFIXES:
        kind = "engine"
    else:
        raise BadInputError(f"{path}: benchmark a model.onnx or an engine.plan (got {suffix or 'no extension'})")
    if not path.is_file():
        raise BadInputError(f"{path} does not exist: create it with `deploy export` or `deploy build`")
    return kind


def onnx_bench_shape(path: Path, batch: int, input_size: Optional[int]) -> tuple[int, ...]:
    """Input shape for ``path`` at ``batch``: dynamic batch set to it, spatial dims from the ONNX or --input-size."""
    inp = onnx_input(path)
    dims = list(inp.dims)
    if len(dims) != 4:
        raise BadInputError(f"{path} input {inp.name!r} has shape {inp.dims}: expected NCHW")
    if dims[0] is not None and dims[0] != batch:
        raise BadInputError(f"{path} has a fixed batch of {dims[0]}: use --batch {dims[0]} "
                            "or re-export with a dynamic batch")
    dims[0] = batch
    if dims[1] is None:
        raise BadInputError(f"{path} has a dynamic channel count: re-export with a fixed input shape")
    if input_size is not None:
        for axis in (2, 3):
            if dims[axis] is not None and dims[axis] != input_size:
                raise BadInputError(f"{path} has a fixed input size {dims[2]}x{dims[3]}: drop --input-size "
                                    f"or re-export at {input_size}")
            dims[axis] = input_size
    if dims[2] is None or dims[3] is None:
        raise BadInputError(f"{path} has dynamic height/width: give --input-size")
    return tuple(int(d) for d in dims)  # type: ignore[arg-type]


def engine_bench_shape(path: Path, batch: int, input_size: Optional[int]) -> tuple[int, ...]:
    """Input shape for an engine, from engine.plan.json when present (checked before any GPU work)."""
    meta = load_engine_metadata(path)
    check_batch_in_profile(meta, batch)
    if meta is None:
        return ()  # unknown until the engine is loaded
    shape = (batch, *meta["profile"]["opt"][1:])
    if input_size is not None and tuple(shape[2:]) != (input_size, input_size):
        raise BadInputError(f"{path} was built for {shape[2]}x{shape[3]} inputs: drop --input-size "
                            "or rebuild from an ONNX of that size")
    return tuple(int(d) for d in shape)


def open_runtime(path: Path, kind: str, provider: Optional[str], threads: Optional[int],
                 include_copies: bool, cuda_graph: bool, spin: bool = True) -> Any:
    """Construct the runtime for an artifact; every availability check happens here first."""
    if kind == "onnx":
        if cuda_graph:
            raise BadInputError("--cuda-graph applies to engine.plan (TensorRT) only")
        return OrtRuntime(str(path), threads=threads, provider=provider or "cpu", spin=spin)
    if provider not in (None, "tensorrt"):
        raise BadInputError(f"--provider {provider}: an engine.plan runs on TensorRT only; "
                            "bench the model.onnx for other providers")
    if threads is not None:
        raise BadInputError("--threads sets ONNX Runtime's intra-op threads; it does not apply to engine.plan")
    require_tensorrt()
    return TensorRTRuntime(path, include_copies=include_copies, cuda_graph=cuda_graph)


def runtime_facts(rt: Any, kind: str, provider: Optional[str], threads: Optional[int],
                  include_copies: bool) -> dict[str, Any]:
    """Device, provider, threads and copies, merged over the runtime's own describe()."""
    desc = dict(rt.describe()) if hasattr(rt, "describe") else {}
    if kind == "onnx":
        prov = provider or "cpu"
        facts = {"provider": ORT_PROVIDERS[prov], "threads": desc.get("threads", threads),
                 "device": host_device() if prov == "cpu" else _gpu_name(),
                 # session.run takes and returns host numpy arrays: on a GPU provider the copies are in
                 "copies_included": None if prov == "cpu" else True}
    else:
        facts = {"provider": "tensorrt", "threads": None, "device": desc.get("device"),
                 "copies_included": include_copies}
    return {**desc, **facts, "runtime": getattr(rt, "name", desc.get("runtime"))}


def _gpu_name() -> str:
    try:
        import torch  # noqa: PLC0415 - heavy; only a GPU provider's label needs it

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CUDA GPU"
    except Exception:  # noqa: BLE001 - only a label
        return "CUDA GPU"


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
    artifact: Path = typer.Argument(..., help="model.onnx (ONNX Runtime) or engine.plan (TensorRT)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Images per batch."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=1, help="Height = width, for ONNX with dynamic H/W."),
    warmup: str = typer.Option("10", "--warmup", help="Warm-up: a run count (10) or seconds (2s)."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Timed runs (default: up to 100 or 30 s)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Time budget in seconds, warm-up included."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="ONNX Runtime intra-op threads."),
    provider: Optional[str] = typer.Option(None, "--provider", help="cpu | cuda | tensorrt (ONNX Runtime)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every field and raw sample here."),
    vs: Optional[Path] = typer.Option(None, "--vs", help="Second artifact, interleaved (A B, B A, …) on the same input."),
    seed: int = typer.Option(0, "--seed", help="Seed of the input and the bootstrap."),
    include_copies: bool = typer.Option(False, "--include-copies", help="TensorRT: time host<->device copies too."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="TensorRT: replay a captured CUDA graph."),
    profile: bool = typer.Option(False, "--profile", help="ONNX: ONNX Runtime's per-op profile instead of timing "
                                 "(time by op type and by node; JSON to --json, default MODEL.profile.json)."),
    top: int = typer.Option(15, "--top", help="--profile: rows of the op-type and node tables."),
) -> None:
    """Time an artifact (or two, interleaved) and print latency statistics."""
    if iters is not None and duration is not None:
        raise BadInputError("give --iters or --duration, not both")
    if duration is not None and duration <= 0:
        raise BadInputError(f"--duration {duration} must be > 0 seconds")
    warm = Warmup.parse(warmup)
    if provider is not None and provider not in ORT_PROVIDERS:
        raise BadInputError(f"--provider {provider}: choose cpu, cuda or tensorrt")
    if json_out is not None:
        check_output_path(json_out)
    paths = [artifact] + ([vs] if vs is not None else [])
    kinds = [artifact_kind(p) for p in paths]
    if profile:
        if "engine" in kinds:
            raise BadInputError("--profile profiles model.onnx files (ONNX Runtime); time an engine.plan without it")
        shapes = [onnx_bench_shape(p, batch, input_size) for p in paths]
        if len(set(shapes)) > 1:
            raise BadInputError(f"{paths[0].name} takes {shapes[0]} and {paths[1].name} takes {shapes[1]}: "
                                "--vs compares on the same input; export both at the same input size")
        profile_command(paths, shapes, threads=threads, provider=provider, iters=iters,
                        warmup_runs=warm.runs if warm.runs is not None else 3, seed=seed, top=top, json_out=json_out)
        return
    runtimes, shapes = _open_all(paths, kinds, batch, input_size, provider, threads, include_copies, cuda_graph)
    x = np.random.default_rng(seed).standard_normal(shapes[0]).astype(np.float32)
    facts = [{**runtime_facts(rt, k, provider, threads, include_copies), "input_shape": list(s)}
             for rt, k, s in zip(runtimes, kinds, shapes)]
    ab: Optional[ABResult] = None
    if vs is None:
        stats = [benchmark(runtimes[0], x, warmup=warm, iters=iters, duration=duration, progress=True,
                           description=artifact.name)]
    else:
        ab = interleaved(runtimes[0], runtimes[1], x, warmup=warm, iters=iters, duration=duration, seed=seed,
                         progress=True)
        stats = [ab.a, ab.b]
    names = [p.name if len(paths) == 1 else f"{tag}: {p.name}" for tag, p in zip("AB", paths)]
    _print_bench(batch, names, stats, facts, ab)
    if json_out is not None:
        record = bench_record(paths, facts, stats, ab, seed=seed, warmup=warm)
        write_json_atomic(json_out, record)
        console.print(f"wrote {json_out}", highlight=False)


def _open_all(paths: list[Path], kinds: list[str], batch: int, input_size: Optional[int], provider: Optional[str],
              threads: Optional[int], include_copies: bool, cuda_graph: bool) -> tuple[list[Any], list[tuple[int, ...]]]:
    """The runtimes to time (one when A is B: an A/A check of the harness) and the input shape of each."""
    shapes = [onnx_bench_shape(p, batch, input_size) if k == "onnx" else engine_bench_shape(p, batch, input_size)
              for p, k in zip(paths, kinds)]
    # the same file twice is an A/A check of the harness: one session timed in both slots
    # (two sessions of one model differ by ~1 % on tiny models: allocation, not the model)
    same = len(paths) == 2 and paths[1].resolve() == paths[0].resolve()
    # two ONNX Runtime sessions taking turns: idle pool threads must sleep, not spin
    spin = len(paths) == 1 or same
    runtimes = [open_runtime(paths[0], kinds[0], provider, threads, include_copies, cuda_graph, spin)]
    if len(paths) == 2:
        runtimes.append(runtimes[0] if same else open_runtime(paths[1], kinds[1], provider, threads, include_copies,
                                                              cuda_graph, spin))
    for rt in {id(r): r for r in runtimes}.values():
        for w in getattr(rt, "warnings", []):
            console.print(f"[yellow]warning:[/] {w}", highlight=False)
    shapes = [s or (batch, *rt.profile.opt[1:]) for s, rt in zip(shapes, runtimes)]
    if len(shapes) == 2 and shapes[0] != shapes[1]:
        raise BadInputError(f"{paths[0].name} takes {shapes[0]} and {paths[1].name} takes {shapes[1]}: "
                            "--vs compares on the same input; export both at the same input size")
    return runtimes, shapes


def _print_bench(batch: int, names: list[str], stats: list[LatencyStats], facts: list[dict[str, Any]],
                 ab: Optional[ABResult]) -> None:
    console.print(stats_table(f"deploy bench — batch {batch}", list(zip(names, stats, facts)), ab))
    for s, n in zip(stats, names):
        if s.cov_warning:
            console.print(f"[yellow]warning:[/] {n}: coefficient of variation {s.cov * 100:.1f} % > 5 %: "
                          "the machine is noisy; use more --iters or a quieter machine", highlight=False)
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


def build(
    model: Path = typer.Argument(..., help="model.onnx to compile."),
    output: Path = typer.Option(..., "-o", "--output", help="engine.plan to write (engine.plan.json beside it)."),
    fp16: bool = typer.Option(False, "--fp16", help="Allow fp16 kernels."),
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help="Smallest batch (default 1)."),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="Batch TensorRT tunes for (default: max)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Largest batch (default: opt, or 1)."),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="Builder workspace limit in GiB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Load/save tactic timings here."),
) -> None:
    """Compile model.onnx into a TensorRT engine (GPU + TensorRT 10 needed)."""
    opts = validate_build_options(model, output, fp16=fp16, min_batch=min_batch, opt_batch=opt_batch,
                                  max_batch=max_batch, workspace_gib=workspace, timing_cache=timing_cache)
    profile = compute_profile(onnx_input(opts.onnx_path), min_batch, opt_batch, max_batch)
    require_tensorrt()
    meta = build_engine(opts)
    table = Table(title=f"deploy build — {output}", show_header=False)
    for key in ("tensorrt_version", "gpu_name", "compute_capability", "precision", "build_seconds",
                "source_onnx_sha256", "engine_sha256"):
        table.add_row(key, str(meta.get(key)))
    table.add_row("profile (min/opt/max)", " / ".join("x".join(map(str, profile.to_dict()[k]))
                                                     for k in ("min", "opt", "max")))
    console.print(table)
