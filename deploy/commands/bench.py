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

from deploy.commands.bench_profile import profile_command
from deploy.commands.common import JSON, MachineOutput, console, finite, machine_output, warn
from deploy.core.atomic import sha256_file
from deploy.core.environment import host_device, versions
from deploy.core.errors import BadInputError, ConvDeployError
from deploy.core.limits import check_input_elements, check_input_size, check_seed
from deploy.core.pathguard import guard_paths
from validators.latency import ABResult, LatencyStats, Warmup, benchmark, interleaved
from validators.onnx_file import onnx_input
from validators.runtimes.onnxruntime import ORT_PROVIDERS, OrtRuntime
from validators.runtimes.tensorrt import TensorRTRuntime
from validators.runtimes.tensorrt_env import (
    ENGINE_SUFFIXES,
    BatchProfile,
    check_batch_in_profile,
    load_engine_metadata,
    require_tensorrt,
)

if TYPE_CHECKING:
    from deploy.bench.torch_model import TorchBenchOptions

BENCH_FORMAT = "convdeploy-bench/1"
#: --backend -> the artifact kind it runs
BACKENDS = {"ort": "onnx", "trt": "engine", "torch": "torch"}
KIND_FILES = {"onnx": "model.onnx", "engine": "engine.plan", "torch": "model.pt"}
#: files the PyTorch backend times (deploy.bench.torch_model.CHECKPOINT_SUFFIXES; kept here so bench imports no torch)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pt2")


# ---------------------------------------------------------------- plain helpers

def artifact_kind(path: Path, backend: str = "auto") -> str:
    """"onnx", "engine" or "torch" (a checkpoint); BadInputError for a missing file, another
    extension, or a backend that does not run this kind of file."""
    suffix = path.suffix.lower()
    if backend != "auto" and backend not in BACKENDS:
        raise BadInputError(f"--backend {backend}: choose auto, {', '.join(BACKENDS)}")
    if suffix == ".onnx":
        kind = "onnx"
    elif suffix in ENGINE_SUFFIXES:
        kind = "engine"
    elif suffix in CHECKPOINT_SUFFIXES:
        kind = "torch"
    else:
        raise BadInputError(f"{path}: benchmark a model.onnx, an engine.plan or a model.pt "
                            f"(got {suffix or 'no extension'})")
    if backend != "auto" and BACKENDS[backend] != kind:
        raise BadInputError(f"--backend {backend} runs {KIND_FILES[BACKENDS[backend]]} files, not {path.name}: "
                            "give such a file or drop --backend")
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
    shape = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    check_input_elements(shape)
    return shape


def engine_bench_shape(path: Path, batch: int, input_size: Optional[int]) -> tuple[int, ...]:
    """Input shape for an engine, from engine.plan.json when present (checked before any GPU work)."""
    meta = load_engine_metadata(path)
    check_batch_in_profile(meta, batch)
    if meta is None:
        return ()  # unknown until the engine is loaded
    shape = (batch, *meta["profile"]["opt"][1:])
    check_input_elements(shape)
    if input_size is not None:
        shape = (batch, shape[1], input_size, input_size)
        if not BatchProfile.from_dict(meta["profile"]).admits(shape):
            lo, hi = meta["profile"]["min"], meta["profile"]["max"]
            raise BadInputError(f"{path} was built for {lo[2]}x{lo[3]} to {hi[2]}x{hi[3]} inputs: drop --input-size "
                                "or rebuild for that size")
    return tuple(int(d) for d in shape)


def open_runtime(path: Path, kind: str, provider: Optional[str], threads: Optional[int],
                 include_copies: bool, cuda_graph: bool, spin: bool = True,
                 torch_opts: Optional["TorchBenchOptions"] = None, input_size: Optional[int] = None) -> Any:
    """Construct the runtime for an artifact; every availability check happens here first."""
    if kind == "onnx":
        if cuda_graph:
            raise BadInputError("--cuda-graph applies to engine.plan (TensorRT) and to model.pt on --device cuda")
        return OrtRuntime(str(path), threads=threads, provider=provider or "cpu", spin=spin)
    if kind == "torch":
        if provider is not None or include_copies:
            raise BadInputError("--provider and --include-copies do not apply to model.pt: use --device cpu|cuda")
        from deploy.bench import torch_model as torch_bench  # noqa: PLC0415 - torch: only a model.pt needs it; bench x.onnx stays torch-free

        opts = torch_opts or torch_bench.TorchBenchOptions(cuda_graph=cuda_graph)
        return torch_bench.open_torch_runtime(path, opts, input_size, threads)
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
    if kind == "torch":
        cpu = desc.get("clock") == "perf_counter"
        facts = {"provider": desc.get("provider"), "threads": desc.get("threads"),
                 "device": host_device() if cpu else desc.get("device"),
                 # the input tensor is staged on the device once, outside the timing
                 "copies_included": None if cpu else False}
    elif kind == "onnx":
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
    artifact: Path = typer.Argument(..., help="model.onnx (ONNX Runtime), engine.plan (TensorRT) or model.pt "
                                    "(PyTorch: loaded and folded as `deploy export` does)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Images per batch."),
    input_size: Optional[int] = typer.Option(None, "--input-size", min=1, help="Height = width: for ONNX or engines with dynamic "
                                      "H/W, or a model.pt at another size than its checkpoint's."),
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
    if input_size is not None:
        check_input_size("input_size", (input_size,))
    paths = [artifact] + ([vs] if vs is not None else [])
    guard_paths(inputs={"the benchmarked artifact": artifact, "the --vs artifact": vs}, outputs={"`json_file`": json_file})
    kinds = [artifact_kind(artifact, backend)] + [artifact_kind(p) for p in paths[1:]]
    if profile:
        _profile(paths, kinds, batch, input_size, threads, provider, iters, warm, seed, top, as_json, json_file)
        return
    with machine_output(as_json, json_file) as out:
        _time(paths, kinds, out, batch=batch, input_size=input_size, warm=warm, iters=iters, duration=duration,
              threads=threads, provider=provider, seed=seed, include_copies=include_copies, cuda_graph=cuda_graph,
              device=device, dtype=dtype, channels_last=channels_last)


def _time(paths: list[Path], kinds: list[str], out: MachineOutput, *, batch: int, input_size: Optional[int],
          warm: Warmup, iters: Optional[int], duration: Optional[float], threads: Optional[int],
          provider: Optional[str], seed: int, include_copies: bool, cuda_graph: bool, device: str, dtype: str,
          channels_last: bool) -> None:
    """Open the runtimes, time them (interleaved for two), print the table and emit the record."""
    torch_opts = _torch_options(kinds, device, dtype, cuda_graph, channels_last, seed)
    runtimes, shapes = _open_all(paths, kinds, batch, input_size, provider, threads, include_copies, cuda_graph,
                                 torch_opts)
    x = np.random.default_rng(seed).standard_normal(shapes[0]).astype(np.float32)
    facts = [{**runtime_facts(rt, k, provider, threads, include_copies), "input_shape": list(s)}
             for rt, k, s in zip(runtimes, kinds, shapes)]
    ab: Optional[ABResult] = None
    if len(paths) == 1:
        stats = [benchmark(runtimes[0], x, warmup=warm, iters=iters, duration=duration, progress=True,
                           description=paths[0].name)]
    else:
        ab = interleaved(runtimes[0], runtimes[1], x, warmup=warm, iters=iters, duration=duration, seed=seed,
                         progress=True)
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


def _profile(paths: list[Path], kinds: list[str], batch: int, input_size: Optional[int], threads: Optional[int],
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


def _open_all(paths: list[Path], kinds: list[str], batch: int, input_size: Optional[int], provider: Optional[str],
              threads: Optional[int], include_copies: bool, cuda_graph: bool,
              torch_opts: Optional["TorchBenchOptions"] = None) -> tuple[list[Any], list[tuple[int, ...]]]:
    """The runtimes to time (one when A is B: an A/A check of the harness) and the input shape of each."""
    shapes = [onnx_bench_shape(p, batch, input_size) if k == "onnx" else
              engine_bench_shape(p, batch, input_size) if k == "engine" else () for p, k in zip(paths, kinds)]
    # the same file twice is an A/A check of the harness: one session timed in both slots
    # (two sessions of one model differ by ~1 % on tiny models: allocation, not the model)
    same = len(paths) == 2 and paths[1].resolve() == paths[0].resolve()
    # two ONNX Runtime sessions taking turns: idle pool threads must sleep, not spin
    spin = len(paths) == 1 or same
    runtimes = [open_runtime(paths[0], kinds[0], provider, threads, include_copies, cuda_graph, spin,
                             torch_opts, input_size)]
    if len(paths) == 2:
        runtimes.append(runtimes[0] if same else open_runtime(paths[1], kinds[1], provider, threads, include_copies,
                                                              cuda_graph, spin, torch_opts, input_size))
    for rt in {id(r): r for r in runtimes}.values():
        for w in getattr(rt, "warnings", []):
            warn(w)
    shapes = [s or (batch, *(rt.profile.opt[1:] if k == "engine" else rt.sample_shape))
              for s, rt, k in zip(shapes, runtimes, kinds)]
    for shape, rt, path in zip(shapes, runtimes, paths):
        check_input_elements(shape)
        _probe_run(rt, shape, path)
    if len(shapes) == 2 and shapes[0] != shapes[1]:
        raise BadInputError(f"{paths[0].name} takes {shapes[0]} and {paths[1].name} takes {shapes[1]}: "
                            "--vs compares on the same input; export both at the same input size")
    return runtimes, shapes


def _probe_run(rt: Any, shape: tuple[int, ...], path: Path) -> None:
    """One untimed run: a model that cannot run on its own input shape is bad input (exit 2), not a crash."""
    try:
        rt.run(np.zeros(shape, dtype=np.float32))
    except ConvDeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - a runtime refuses a broken graph with its own exception types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BadInputError(f"{path} fails to run on a {'x'.join(map(str, shape))} input ({reason}): "
                            "re-export it or check the file") from exc


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
