"""Serve a checked .onnx with a local tritonserver (Python backend, ONNX Runtime) until Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import typer

from deploy.commands.common import console, warn
from deploy.commands.triton import DYNAMIC_BATCHING, INSTANCES, MAX_BATCH, NAME, PREFERRED, QUEUE_DELAY, SERVING
from deploy.core.atomic import Terminated
from deploy.core.errors import BackendUnavailableError
from deploy.core.pathguard import guard_paths
from deploy.serving.artifact import read_artifact
from deploy.serving.python_backend import serve_plan, write_serve_repository
from deploy.serving.repository import TritonOptions, default_name
from deploy.serving.server import LOOPBACK, TritonServer, find_triton, running_server


def serve(
    model: Path = typer.Argument(..., help="model.onnx to serve (a .plan needs the Triton container: deploy triton)."),
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port", help="gRPC port (default: --port + 1)."),
    host: str = typer.Option(LOOPBACK, "--host", help="Address to listen on (default loopback only)."),
    name: Optional[str] = NAME,
    max_batch: Optional[int] = MAX_BATCH,
    instances: int = INSTANCES,
    preferred_batch: Optional[list[int]] = PREFERRED,
    queue_delay_us: int = QUEUE_DELAY,
    dynamic_batching: bool = DYNAMIC_BATCHING,
    threads: int = typer.Option(0, "--threads", rich_help_panel=SERVING,
                                help="ONNX Runtime intra-op threads per instance (0: its default)."),
    triton_env: Optional[Path] = typer.Option(None, "--triton-env", metavar="DIR",
                                              help="Python environment with nvidia-pytriton and onnxruntime (default: "
                                                   "$CONVDEPLOY_TRITON_ENV, else this one; `make triton-env` makes "
                                                   ".venv-triton)."),
    repository: Optional[Path] = typer.Option(None, "--repository", metavar="DIR",
                                              help="Write the served repository here and keep it (default: a "
                                                   "temporary folder)."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the server to be ready."),
) -> None:
    """Serve a checked .onnx with a local tritonserver (Python backend, ONNX Runtime) until Ctrl-C or SIGTERM."""
    install = find_triton(triton_env)
    art = read_artifact(model)
    opts = TritonOptions(name=name or default_name(model), max_batch=max_batch, instances=instances, kind="cpu",
                         dynamic_batching=dynamic_batching, preferred_batch=tuple(preferred_batch or ()),
                         queue_delay_us=queue_delay_us)
    plan = serve_plan(art, opts, threads)
    with _repository(repository) as repo:
        guard_paths(inputs={"the ONNX model": model},
                    outputs={f"`repository` file {p.relative_to(repo)}": p for p in plan.paths(repo) if p.parent.is_dir()})
        write_serve_repository(plan, repo)
        try:
            with running_server(repo, install, port, grpc_port or port + 1, host, timeout) as server:
                _announce(server, plan.name)
                _until_stopped(server)
        except (KeyboardInterrupt, Terminated) as stop:
            signal_name = "SIGINT" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"
            console.print(f"stopped tritonserver ({signal_name})", highlight=False)


@contextlib.contextmanager
def _repository(keep: Optional[Path]) -> Iterator[Path]:
    if keep is not None:
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="convdeploy-serve-") as tmp:
        yield Path(tmp)


def _announce(server: TritonServer, name: str) -> None:
    console.print(f"serving {name!r} with tritonserver (pid {server.process.pid}): HTTP http://{server.http_url}, "
                  f"gRPC {server.grpc_url}", highlight=False, soft_wrap=True)
    console.print(f"infer: POST http://{server.http_url}/v2/models/{name}/infer (KServe v2); stop with Ctrl-C or "
                  f"`kill -TERM {os.getpid()}`", highlight=False, soft_wrap=True)
    if server.host not in (LOOPBACK, "localhost", "::1"):
        warn(f"listening on {server.host}: anyone who reaches this address can send requests (no authentication)")


def _until_stopped(server: TritonServer) -> None:
    while server.process.poll() is None:
        time.sleep(0.25)
    raise BackendUnavailableError(f"tritonserver stopped by itself (exit {server.process.returncode}): "
                                  f"{server.log_tail(5)}")
