"""`deploy build MODEL.onnx -o engine.plan`: compile an ONNX model into a TensorRT engine (through polygraphy)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from deploy.commands.common import JSON, JSON_FILE, console, finite, machine_output, warn
from exporters.tensorrt.build import build_engine, compute_profile, onnx_input, require_engine_builder, validate_build_options
from validators.runtimes.tensorrt_env import metadata_path


def build(
    model: Path = typer.Argument(..., help="model.onnx to compile."),
    output: Path = typer.Option(..., "-o", "--output", help="engine.plan to write (engine.plan.json beside it)."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 engine: TensorRT 10's fp16 kernels; on TensorRT 11 (strongly "
                              "typed) an fp16 copy of the ONNX, checked on ONNX Runtime first (exit 3 if it disagrees)."),
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help="Smallest batch (default 1)."),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="Batch TensorRT tunes for (default: max)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Largest batch (default: opt, or 1)."),
    workspace: Optional[float] = typer.Option(None, "--workspace", callback=finite,
                                              help="Builder workspace limit in GiB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Load/save tactic timings here (one "
                                                "from another GPU or TensorRT is reported and replaced)."),
    min_size: Optional[int] = typer.Option(None, "--min-size", help="ONNX with dynamic H/W: smallest input size "
                                           "(height = width; default: opt)."),
    opt_size: Optional[int] = typer.Option(None, "--opt-size", help="ONNX with dynamic H/W: size TensorRT tunes for."),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="ONNX with dynamic H/W: largest input size."),
    as_json: bool = JSON,
    json_file: Optional[Path] = JSON_FILE,
) -> None:
    """Compile model.onnx into a TensorRT engine (GPU + TensorRT 10 or 11 needed; built with polygraphy)."""
    opts = validate_build_options(model, output, fp16=fp16, min_batch=min_batch, opt_batch=opt_batch,
                                  max_batch=max_batch, workspace_gib=workspace, timing_cache=timing_cache,
                                  min_size=min_size, opt_size=opt_size, max_size=max_size)
    profile = compute_profile(onnx_input(opts.onnx_path), min_batch, opt_batch, max_batch, min_size, opt_size, max_size)
    # the JSON record must not land on the model, the engine (or its metadata) or the timing cache
    others = {"the ONNX model": model, "the engine": output, "the engine metadata": metadata_path(output),
              "the timing cache": timing_cache}
    with machine_output(as_json, json_file, reads=others) as out:
        require_engine_builder(fp16)
        meta = build_engine(opts)
        out.emit(meta)  # the engine.plan.json record
        _print_build(output, meta, profile.to_dict())


def _print_build(output: Path, meta: dict, profile: dict) -> None:
    table = Table(title=f"deploy build — {output}", show_header=False)
    for key in ("tensorrt_version", "gpu_name", "compute_capability", "precision", "precision_route", "build_seconds",
                "source_onnx_sha256", "engine_sha256"):
        table.add_row(key, str(meta.get(key)))
    table.add_row("profile (min/opt/max)", " / ".join("x".join(map(str, profile[k]))
                                                     for k in ("min", "opt", "max")))
    console.print(table)
    for note in meta.get("notes", []):
        warn(note)
