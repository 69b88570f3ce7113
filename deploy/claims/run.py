"""`deploy claims` as one plain function: checkpoints -> exports -> interleaved timing -> verdicts -> reports.

Every model of the matrix (deploy/claims/matrix.py) gets a checkpoint with seeded random
weights and non-trivial BatchNorm statistics (what `deploy zoo create` writes), goes
through the export pipeline (deploy/pipeline.run_export: fold, ONNX, onnxsim, graph
checks, parity), and is timed against the plain ResNet-50 export with interleaved A/B
runs with an A/A control, sampled until decisive (validators/sequential.controlled), on the chosen
backend: ONNX Runtime or TensorRT on the
exports, or PyTorch on the checkpoints themselves (deploy/torch_bench: folded where the
entry folds, the training form where it does not). The verdicts come from
validators/claims.py; claims.json, claims.md and claims.png are written atomically.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import onnx
import onnxruntime
import torch

from deploy.bench.runtime import open_runtime
from deploy.bench.torch_model import TorchBenchOptions
from deploy.claims.counts import zoo_row
from deploy.claims.matrix import (
    FASTER_BAND,
    ZERO_OVERHEAD_BAND,
    MatrixEntry,
    ModelRecord,
    baseline_entry,
    evaluate,
    latency_rows,
    paper_figures,
)
from deploy.claims.report import write_claims_json, write_claims_md, write_claims_png
from deploy.claims.settings import ClaimsSettings
from deploy.core.atomic import sha256_file
from deploy.core.environment import device_description, host_device, versions
from deploy.core.errors import BackendUnavailableError, BadInputError, ParityError
from deploy.core.pathguard import guard_paths
from deploy.core.progress import SILENT, Progress
from deploy.load.checkpoint import save_checkpoint
from deploy.load.source import ModelSource
from deploy.models.random_init import random_model
from deploy.pipeline.export import run_export
from deploy.pipeline.options import ExportOptions
from deploy.version import __version__
from exporters.tensorrt.build import build_engine, engine_builder_available
from exporters.tensorrt.options import validate_build_options
from validators.claims import ClaimResult, RatioMeasure, count_subnormals, exit_code_for, tally
from validators.runtimes.base import Runtime
from validators.runtimes.tensorrt_env import running_environment
from validators.sequential import controlled


@contextlib.contextmanager
def _elapsed(progress: Progress, seconds: float) -> Iterator[None]:
    """Advance the task by the ``seconds`` a bounded step takes, once it is done."""
    yield
    progress.update(advance=seconds)


def resolve_backend(name: str, device: str = "cpu") -> tuple[str, str]:
    """("ort" | "trt" | "torch", text for reports); exit 5 when TensorRT or the GPU is asked for and missing."""
    if name not in ("auto", "ort", "trt", "torch"):
        raise BadInputError(f"`backend` {name!r}: choose auto, ort, trt or torch")
    if device != "cpu" and name != "torch":
        raise BadInputError(f"`device` {device} applies to the `backend` torch: ONNX Runtime runs on CPU here")
    if name == "torch":
        opts = TorchBenchOptions(device=device)
        opts.check()
        return "torch", f"PyTorch {torch.__version__} eager on {device} (fp32; folded where the model folds)"
    if name in ("auto", "trt"):
        ok, reason = engine_builder_available()
        if ok:
            return "trt", reason + " (fp32, engine time without host copies)"
        if name == "trt":
            raise BackendUnavailableError(f"{reason}; the `backend` ort runs the claims on ONNX Runtime CPU")
    return "ort", f"ONNX Runtime {onnxruntime.__version__} CPU"


def claim_runtime(rec: ModelRecord, backend: str, settings: ClaimsSettings, max_batch: int,
                  build: bool = True) -> Runtime:
    """The record's export on ONNX Runtime or as a TensorRT engine (built here unless ``build`` is False,
    profile 1..max_batch), or its checkpoint on PyTorch (folded when the entry folds), opened by
    ``deploy.bench.runtime``."""
    onnx_path = Path(rec.extra["onnx"])
    if backend == "torch":
        opts = TorchBenchOptions(device=settings.device, fold=rec.entry.fold, seed=settings.seed)
        return open_runtime(Path(rec.extra["checkpoint"]), "torch", threads=settings.threads, torch_opts=opts)
    if backend == "ort":  # sessions take turns: no spinning
        return open_runtime(onnx_path, "onnx", threads=settings.threads, spin=False)
    engine = onnx_path.with_suffix(".plan")
    if build:
        build_engine(validate_build_options(onnx_path, engine, min_batch=1, opt_batch=max_batch, max_batch=max_batch))
    return open_runtime(engine, "engine")


# ---------------------------------------------------------------- steps

def make_checkpoint(entry: MatrixEntry, input_size: Optional[tuple[int, int]], seed: int, path: Path) -> tuple[int, ...]:
    """Seeded random weights and BN statistics, as `deploy zoo create`; returns the input shape."""
    model = random_model(entry.arch, entry.conv, input_size=input_size, seed=seed, **entry.kwargs)
    save_checkpoint(model, path, meta={"created_by": "deploy claims", "seed": seed, "version": __version__})
    return tuple(model.input_shape)


def export_entry(entry: MatrixEntry, ckpt: Path, out_dir: Path, settings: ClaimsSettings, rec: ModelRecord) -> None:
    """run_export with the entry's fold/simplify; parity failures are recorded, not raised."""
    samples = settings.parity_samples or settings.defaults().parity_samples
    opts = ExportOptions(source=ModelSource(ckpt), output=out_dir / f"{entry.stem}.onnx", fold=entry.fold,
                         simplify=entry.simplify, strict=False, samples=samples, seed=settings.seed,
                         compare_rewrites=False)
    opts.exporter = settings.exporter or settings.defaults().exporter
    start = time.perf_counter()
    try:
        outcome = run_export(opts)
    except ParityError as exc:
        if entry == baseline_entry():
            raise
        rec.parity_passed, rec.parity_detail, rec.skipped = False, str(exc), "parity failed"
        rec.extra["export_seconds"] = time.perf_counter() - start
        return
    rec.graph = outcome.graph
    rec.parity_passed = outcome.parity.passed
    rec.parity_detail = "; ".join(outcome.parity.summary().splitlines())
    fold = outcome.report.fold.to_dict() if outcome.report.fold else {}
    rec.extra.update(onnx=str(outcome.onnx_path), onnx_sha256=sha256_file(outcome.onnx_path),
                     export_seconds=time.perf_counter() - start, fold=fold, report=str(outcome.report_path),
                     subnormal_weights=count_subnormals(onnx.load(str(outcome.onnx_path))))


def time_entries(records: dict[str, ModelRecord], settings: ClaimsSettings, backend: str, input_shape: tuple[int, ...],
                 progress: Progress) -> tuple[dict[tuple[str, int], RatioMeasure], list[dict[str, Any]]]:
    """Every exported model against the baseline, at every batch: A/A-controlled, sequential rounds."""
    batches = settings.batch_list()
    baseline = baseline_entry()
    base = records[baseline.key]
    todo = [r for r in records.values() if r is not base and "onnx" in r.extra]
    progress.task("timing", sum(settings.seconds_for(b) for b in batches) * len(todo))
    start = time.perf_counter()
    base_rt = claim_runtime(base, backend, settings, max(batches))
    base.extra["session_load_s"] = time.perf_counter() - start
    base_twin = claim_runtime(base, backend, settings, max(batches), build=False)  # the A/A control's B'
    inputs = {b: np.random.default_rng(settings.seed).standard_normal((b, *input_shape)).astype(np.float32)
              for b in batches}
    measures: dict[tuple[str, int], RatioMeasure] = {}
    raw: list[dict[str, Any]] = []
    warmup = settings.warmup or settings.defaults().warmup
    for rec in todo:
        start = time.perf_counter()
        rt = claim_runtime(rec, backend, settings, max(batches))
        rec.extra["session_load_s"] = time.perf_counter() - start
        for b in batches:
            budget = settings.seconds_for(b)
            progress.update(text=f"timing {rec.entry.label} vs {baseline.label} and its A/A, batch {b} "
                                 f"(<= {budget:.0f} s)")
            with _elapsed(progress, budget):
                cr = controlled(rt, base_rt, inputs[b], twin=base_twin, band=rec.entry.band, warmup=warmup,
                                iters=settings.iters, duration=budget, margin=settings.margin, seed=settings.seed)
            m = RatioMeasure.from_controlled(cr)
            measures[(rec.entry.key, b)] = m
            raw.append({"model": rec.entry.key, "baseline": baseline.key, "batch": b, **cr.to_dict()})
            progress.log(f"{rec.entry.label}, batch {b}: ratio {m.text()}, {m.aa_text()}, {m.pairs_text()}")
        del rt
    return measures, raw


# ---------------------------------------------------------------- the run

def _model_doc(rec: ModelRecord) -> dict[str, Any]:
    e = rec.entry
    return {"key": e.key, "label": e.label, "arch": e.arch, "conv": e.conv, "conv_kwargs": e.kwargs, "fold": e.fold,
            "simplify": e.simplify, "skipped": rec.skipped, "paper_form": rec.paper_form,
            "graph": rec.graph.to_dict() if rec.graph is not None else None, "parity_passed": rec.parity_passed,
            "parity_detail": rec.parity_detail, **rec.extra}


#: which evidence decides which claim
NOTE_JUDGED = ("Claim 1 is judged on structure (latency agrees, stays undecided or is a machine effect); claim 3 on "
               "latency (its counts are shown beside the paper's); claims 4 and 5 on the counts the papers claim "
               "(their latency is reported). Claim 2 has no verdict.")


def _notes(settings: ClaimsSettings, backend: str, records: dict[str, ModelRecord], shape: tuple[int, ...]) -> list[str]:
    notes = [
        NOTE_JUDGED,
        "Counts held against the papers are at the papers' input 3x224x224 (trainable params with BatchNorm kept; "
        "Conv/Linear MACs at batch 1, `deploy zoo list`); twin comparisons and MAC-ratio floors come from the "
        f"exported graphs at {shape[1]}x{shape[2]}.",
        "Every comparison times the baseline against a second instance of itself in the same rotating rounds "
        f"(the A/A control). Its interval widened by {100 * settings.margin:g} % on each side is the noise band; the "
        "A/B interval divided by it is the corrected interval, judged against the claim's band: inside passes, "
        "wholly outside fails, across an edge when the budget ends is inconclusive. Rounds are added until the "
        "corrected interval is decisive or the budget ends; the pairs each verdict took are shown.",
        "Structure first: where the folded graph equals its plain twin op for op (claim 1), the structure decides; "
        "latency can agree, stay undecided, or be reported as a machine effect (with the subnormal-weight count and "
        "the drift between the halves of the rounds), never refute two identical graphs.",
    ]
    if backend == "torch":
        notes.append("PyTorch runs each checkpoint as the entry says: folded models in their deploy form, unfolded "
                     "ones (claim 2) in their training form, which computes CoC's and DO-Conv's kernels in every "
                     "forward pass; the graph checks and parity are those of the ONNX exports. Its \"session load\" is "
                     "loading the checkpoint and folding it (with the fold's float64 check).")
    if backend == "ort":
        notes.append("ONNX Runtime constant-folds weight subgraphs and fuses BatchNorm when it loads a model, so an "
                     "unfolded export (claim 2) is folded by the runtime at load time; its graph check shows what a "
                     "strict deploy target sees.")
    if settings.quick:
        notes.append("quick mode: small inputs, short timing budgets and the faster TorchScript exporter, for CI; "
                     "use the full run for conclusions.")
    notes += [f"{r.entry.label}: {r.skipped}" for r in records.values() if r.skipped]
    return notes


#: the files `deploy claims` writes into its output directory (besides checkpoints and exports)
CLAIMS_FILES = ("claims.json", "claims.md", "claims.png")


def _output_dir(settings: ClaimsSettings) -> Path:
    out = Path(settings.output_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"output {out} is a file: give a directory for claims.json, claims.md and claims.png")
    if not out.parent.is_dir():
        raise BadInputError(f"the parent of the output directory {out} does not exist: create it first")
    if out.is_dir():  # files already there (or links) must not be one another
        guard_paths(inputs={}, outputs={f"`output_dir`/{name}": out / name for name in CLAIMS_FILES})
    return out


def make_checkpoints(records: dict[str, ModelRecord], settings: ClaimsSettings, out: Path,
                     progress: Progress) -> tuple[int, ...]:
    """One checkpoint per model (folded and unfolded share it) and its paper-form counts; the
    baseline's input shape. A model that cannot take the input size is marked skipped."""
    input_size = settings.input_size or settings.defaults().input_size
    entries = [r.entry for r in records.values()]
    progress.task("checkpoints", len({e.checkpoint_stem for e in entries}))
    shapes: dict[str, tuple[int, ...]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.checkpoint_stem in shapes:
            continue
        progress.update(text=f"checkpoint {e.label.split(' (')[0]}: seeded weights and BN statistics")
        rows[e.checkpoint_stem] = zoo_row(e.arch, e.conv, e.kwargs)
        try:
            shapes[e.checkpoint_stem] = make_checkpoint(e, input_size, settings.seed, out / f"{e.checkpoint_stem}.pt")
        except BadInputError as exc:
            if e == baseline_entry():
                raise
            shapes[e.checkpoint_stem] = ()
            for r in records.values():
                if r.entry.checkpoint_stem == e.checkpoint_stem:
                    r.skipped = str(exc).rsplit("; ", 1)[0]
            progress.log(f"skipped {e.label}: {exc}")
        progress.update(advance=1)
    for r in records.values():
        r.paper_form = {k: rows[r.entry.checkpoint_stem][k] for k in ("params", "macs", "input_shape")}
        if shapes[r.entry.checkpoint_stem]:
            ckpt = out / f"{r.entry.checkpoint_stem}.pt"
            r.extra.update(checkpoint=str(ckpt), checkpoint_sha256=sha256_file(ckpt))
    return shapes[baseline_entry().checkpoint_stem]


def export_all(records: dict[str, ModelRecord], settings: ClaimsSettings, out: Path, progress: Progress) -> None:
    todo = [r for r in records.values() if not r.skipped]
    progress.task("exports", len(todo))
    for r in todo:
        progress.update(text=f"export {r.entry.label}: fold, ONNX, simplify, graph check, parity")
        export_entry(r.entry, Path(r.extra["checkpoint"]), out, settings, r)
        flagged = r.graph is not None and r.graph.reasons
        progress.log(f"exported {r.entry.label} in {r.extra['export_seconds']:.0f} s: parity "
               f"{'ok' if r.parity_passed else 'FAILED'}"
               + (f", graph check flagged {len(r.graph.reasons)} issue(s)" if flagged and r.graph else ""))
        progress.update(advance=1)


def _settings_doc(settings: ClaimsSettings, input_shape: tuple[int, ...], entries: list[str]) -> dict[str, Any]:
    batches = settings.batch_list()
    d = settings.defaults()
    return {"quick": settings.quick, "input_shape": list(input_shape), "batches": batches,
            "band": list(ZERO_OVERHEAD_BAND), "faster_band": list(FASTER_BAND), "aa_margin": settings.margin,
            "parity_samples": settings.parity_samples or d.parity_samples,
            "warmup": settings.warmup or d.warmup, "iters": settings.iters,
            "exporter": settings.exporter or d.exporter,
            "seconds_per_comparison": {str(b): settings.seconds_for(b) for b in batches},
            "seeds": {"weights": settings.seed, "parity": settings.seed, "inputs": settings.seed,
                      "bootstrap": settings.seed},
            "models": entries}


def _environment_doc(settings: ClaimsSettings, backend: str, backend_text: str) -> dict[str, Any]:
    device = device_description()
    device_text = host_device()
    if backend == "trt":
        device["gpu"] = running_environment()
        device_text = f"{device['gpu'].get('gpu_name')} (host {device_text})"
    if backend == "torch" and settings.device == "cuda":
        device["gpu"] = {"gpu_name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
        device_text = f"{device['gpu']['gpu_name']} (host {device_text})"
    threads = f", {settings.threads} intra-op thread(s)" if backend in ("ort", "torch") and settings.threads else ""
    names = {"ort": "onnxruntime", "trt": "tensorrt", "torch": "pytorch"}
    return {"versions": versions(), "device": device, "device_text": device_text,
            "backend": {"name": names[backend], "text": backend_text + threads,
                        "threads": settings.threads if settings.threads else "runtime default"}}


@dataclass
class ClaimsRun:
    """What `deploy claims` did: the verdicts and measures, typed, and the document written as claims.json."""

    claims: list[ClaimResult]
    measures: dict[tuple[str, int], RatioMeasure]
    records: dict[str, ModelRecord]
    batches: list[int]
    input_shape: tuple[int, ...]
    backend_text: str
    date: str
    seconds: float
    output_dir: Path
    doc: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.claims)

    def measure(self, subject: str, batch: int) -> Optional[RatioMeasure]:
        """The latency measure of the model a claim is about, at ``batch``."""
        key = next((k for k, r in self.records.items() if r.entry.label == subject), None)
        return self.measures.get((key, batch)) if key is not None else None

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def run_claims(settings: ClaimsSettings, entries: list[MatrixEntry], progress: Progress = SILENT) -> ClaimsRun:
    """Do the whole run and write DIR/claims.{json,md,png}."""
    t0 = time.perf_counter()
    settings.check()
    batches = settings.batch_list()
    backend, backend_text = resolve_backend(settings.backend, settings.device)
    out = _output_dir(settings)
    out.mkdir(exist_ok=True)
    records = {e.key: ModelRecord(e) for e in entries}
    input_shape = make_checkpoints(records, settings, out, progress)
    export_all(records, settings, out, progress)
    measures, raw = time_entries(records, settings, backend, input_shape, progress)
    claims = evaluate(records, measures, batches)
    now = time.gmtime()
    env = _environment_doc(settings, backend, backend_text)
    doc: dict[str, Any] = {
        "format": "convdeploy-claims/2", "title": "convdeploy claims",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", now), "date": time.strftime("%Y-%m-%d", now),
        **env,
        "settings": _settings_doc(settings, input_shape, [e.key for e in entries]),
        "paper": paper_figures(),
        "models": [_model_doc(r) for r in records.values()],
        "latency": raw,
        "latency_rows": latency_rows(records, measures, batches),
        "claims": [c.to_dict() for c in claims],
        "notes": _notes(settings, backend, records, input_shape),
    }
    doc["summary"] = {**tally(claims), "exit_code": exit_code_for(claims)}
    doc["seconds"] = time.perf_counter() - t0
    write_claims_png(out / "claims.png", doc)
    write_claims_md(out / "claims.md", doc)
    doc["outputs"] = {name: {"path": str(out / name), "sha256": sha256_file(out / name)}
                      for name in ("claims.md", "claims.png")}
    write_claims_json(out / "claims.json", doc)
    return ClaimsRun(claims, measures, records, batches, tuple(input_shape), env["backend"]["text"], doc["date"],
                     doc["seconds"], out, doc)
