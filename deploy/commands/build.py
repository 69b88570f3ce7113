"""`deploy build MODEL.onnx -o engine.plan`: compile an ONNX model into a TensorRT engine (through polygraphy)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from deploy.commands.common import console, machine_output, warn
from deploy.commands.options import (
    FP16,
    JSON,
    JSON_FILE,
    MAX_BATCH,
    MIN_BATCH,
    OPT_BATCH,
    TIMING_CACHE,
    WORKSPACE,
)
from exporters.tensorrt.build import build_engine, require_engine_builder
from exporters.tensorrt.options import compute_profile, validate_build_options
from validators.onnx_file import onnx_input
from validators.runtimes.tensorrt_env import metadata_path


def build(
    model: Path = typer.Argument(..., help="model.onnx to compile."),
    output: Path = typer.Option(..., "-o", "--output", help="engine.plan to write (engine.plan.json beside it)."),
    fp16: bool = FP16,
    min_batch: Optional[int] = MIN_BATCH,
    opt_batch: Optional[int] = OPT_BATCH,
    max_batch: Optional[int] = MAX_BATCH,
    workspace: Optional[float] = WORKSPACE,
    timing_cache: Optional[Path] = TIMING_CACHE,
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
