"""Write a Triton model repository for a checked .onnx or .plan: config.pbtxt + the model, both or neither."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from deploy.commands.common import console, detail, machine_output, warn
from deploy.commands.options import JSON, JSON_FILE
from deploy.core.errors import BackendUnavailableError
from deploy.core.pathguard import guard_paths
from deploy.serving.artifact import ENGINE, ServedArtifact, read_artifact
from deploy.serving.repository import RepositoryPlan, TritonOptions, default_name, plan_repository, write_repository
from deploy.serving.schema import parse_config
from deploy.serving.triton_releases import container_hint, triton_releases
from validators.runtimes.tensorrt_env import metadata_path

SERVING = "Serving"
NAME = typer.Option(None, "--name", rich_help_panel=SERVING, help="Model name in the repository (default: the "
                    "artifact's file name without extension).")
MAX_BATCH = typer.Option(None, "--max-batch", rich_help_panel=SERVING, help="max_batch_size (default: the engine's "
                         "profile maximum, 8 for an ONNX with a dynamic batch; a fixed batch is always 0).")
INSTANCES = typer.Option(1, "--instances", rich_help_panel=SERVING, help="Model instances (instance_group count).")
PREFERRED = typer.Option(None, "--preferred-batch", rich_help_panel=SERVING,
                         help="A batch size the dynamic batcher prefers (repeat for several).")
QUEUE_DELAY = typer.Option(100, "--queue-delay-us", rich_help_panel=SERVING,
                           help="How long the dynamic batcher waits to fill a batch, in microseconds.")
DYNAMIC_BATCHING = typer.Option(True, "--dynamic-batching/--no-dynamic-batching", rich_help_panel=SERVING,
                                help="Write a dynamic_batching block (models with a dynamic batch axis).")


def triton(
    artifacts: list[Path] = typer.Argument(..., help="model.onnx, or engine.plan (several: one per GPU architecture)."),
    output: Path = typer.Option(..., "-o", "--output", help="The model repository folder (must exist)."),
    name: Optional[str] = NAME,
    max_batch: Optional[int] = MAX_BATCH,
    instances: int = INSTANCES,
    kind: str = typer.Option("gpu", "--kind", rich_help_panel=SERVING, help="cpu or gpu (instance_group kind)."),
    preferred_batch: Optional[list[int]] = PREFERRED,
    queue_delay_us: int = QUEUE_DELAY,
    dynamic_batching: bool = DYNAMIC_BATCHING,
    ort_trt: Optional[str] = typer.Option(None, "--ort-trt", metavar="fp32|fp16", rich_help_panel=SERVING,
                                          help=".onnx on a GPU: ONNX Runtime's TensorRT execution provider at this "
                                               "precision."),
    as_json: bool = JSON,
    json_file: Optional[Path] = JSON_FILE,
) -> None:
    """Write a Triton model repository for a checked .onnx or .plan: config.pbtxt + the model, both or neither."""
    inputs = _inputs(artifacts)
    with machine_output(as_json, json_file, reads=inputs) as out:
        arts = [read_artifact(a) for a in artifacts]
        opts = TritonOptions(name=name or default_name(artifacts[0]), max_batch=max_batch, instances=instances,
                             kind=kind, dynamic_batching=dynamic_batching, preferred_batch=tuple(preferred_batch or ()),
                             queue_delay_us=queue_delay_us, ort_tensorrt=ort_trt)
        plan = plan_repository(arts, opts)
        guard_paths(inputs=inputs, outputs={f"`output` file {p.relative_to(output)}": p for p in plan.paths(output)
                                                  if p.parent.is_dir()})
        checked = _check_schema(plan)
        written = write_repository(plan, output)
        record = _record(plan, arts[0], output, written, checked)
        out.emit(record)
        _print(record)


def _inputs(artifacts: list[Path]) -> dict[str, Optional[Path]]:
    reads: dict[str, Optional[Path]] = {}
    for i, a in enumerate(artifacts):
        reads[f"the artifact {i + 1}"] = a
        reads[f"the engine record {i + 1}"] = metadata_path(a) if a.suffix.lower() != ".onnx" else None
    return reads


def _check_schema(plan: RepositoryPlan) -> bool:
    """Parse the config with Triton's ModelConfig where tritonclient is installed; False where it is not."""
    try:
        model_config = plan.config
        parse_config(model_config.to_pbtxt())
    except BackendUnavailableError as exc:
        detail(f"schema check skipped: {exc}")
        return False
    return True


def _record(plan: RepositoryPlan, art: ServedArtifact, repo: Path, written: list[Path], checked: bool) -> dict[str, Any]:
    cfg = plan.config
    record: dict[str, Any] = {
        "repository": str(repo), "model": plan.name, "platform": cfg.platform, "max_batch_size": cfg.max_batch_size,
        "dynamic_batching": cfg.dynamic_batching is not None, "instances": cfg.instance_count,
        "kind": cfg.instance_kind, "files": [str(p) for p in written], "schema_checked": checked,
        "config": cfg.to_pbtxt(), "notes": list(plan.notes),
    }
    if art.kind == ENGINE:
        record.update(tensorrt_version=art.tensorrt_version, compute_capability=art.compute_capability,
                      gpu_name=art.gpu_name, triton_releases=list(triton_releases(str(art.tensorrt_version))),
                      cc_model_filenames=cfg.cc_model_filenames)
    return record


def _print(record: dict[str, Any]) -> None:
    table = Table(title=f"deploy triton — {record['repository']}/{record['model']}", show_header=False)
    for key in ("platform", "max_batch_size", "dynamic_batching", "instances", "kind"):
        table.add_row(key, str(record[key]))
    if "tensorrt_version" in record:
        table.add_row("engine", f"TensorRT {record['tensorrt_version']}, compute capability "
                                f"{record['compute_capability']} ({record['gpu_name']})")
        table.add_row("Triton container", container_hint(str(record["tensorrt_version"])))
    table.add_row("Triton schema", "parsed as ModelConfig" if record["schema_checked"] else
                  "not checked here (tritonclient is not installed)")
    console.print(table)
    for path in record["files"]:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True, markup=False)
    for note in record["notes"]:
        warn(note)
