"""A local ``tritonserver`` on a model repository: found in a Python environment that has
``nvidia-pytriton`` (which ships the binary with its Python backend) and ONNX Runtime, started on
loopback, waited for until ready, and always stopped (SIGTERM, then SIGKILL of its process group).

The environment is separate from convdeploy's own (nvidia-pytriton pins numpy<2): ``make triton-env``
makes ``.venv-triton``; ``deploy serve --triton-env DIR`` or ``CONVDEPLOY_TRITON_ENV`` point to another.
The Python backend's stub for that environment's Python version is copied into a private backend
folder, as PyTriton does, and the stub runs that environment's Python (its ``bin`` first on PATH).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from deploy.core.atomic import deferred_signals
from deploy.core.errors import BackendUnavailableError

ENV_VAR = "CONVDEPLOY_TRITON_ENV"
INSTALL_HINT = ("python3 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton onnxruntime 'numpy<2' "
                "(`make triton-env`), then give it as `triton_env`")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class TritonInstall:
    """Where the parts of a PyPI ``tritonserver`` are in one Python environment."""

    env: Path
    server: Path
    libs: Path
    backends: Path
    caches: Path
    stub: Path


def _site_packages(env: Path) -> list[Path]:
    return sorted(env.glob("lib/python3.*/site-packages"))


def find_triton(env: Path | None = None) -> TritonInstall:
    """The Triton install of ``env`` (default: ``$CONVDEPLOY_TRITON_ENV``, else this interpreter's
    environment); BackendUnavailableError (exit 5) naming what is missing."""
    chosen = env or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else Path(sys.prefix))
    for site in _site_packages(chosen):
        dist = site / "pytriton" / "tritonserver"
        version = site.parent.name.removeprefix("python")
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if (dist / "bin" / "tritonserver").is_file() and stub.is_file():
            if not (site / "onnxruntime").is_dir():
                raise BackendUnavailableError(f"{chosen} has tritonserver but not onnxruntime, which the served "
                                              f"model.py runs: {chosen}/bin/pip install onnxruntime")
            return TritonInstall(chosen, dist / "bin" / "tritonserver", site / "nvidia_pytriton.libs",
                                 dist / "backends", dist / "caches", stub)
    raise BackendUnavailableError(f"no tritonserver in the Python environment {chosen}: {INSTALL_HINT}")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _private_backends(install: TritonInstall, root: Path) -> Path:
    """A backend folder whose Python backend has the stub of the environment's Python version."""
    backends = root / "backends"
    shutil.copytree(install.backends, backends, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, backends / "python" / "triton_python_backend_stub")
    return backends


def _environment(install: TritonInstall) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(install.libs), env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = os.pathsep.join([str(install.env / "bin"), env.get("PATH", "")])
    return env


@dataclass
class TritonServer:
    """A running ``tritonserver``: its process, ports and log file."""

    process: subprocess.Popen[bytes]
    host: str
    http_port: int
    grpc_port: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def ready(self) -> bool:
        """Whether the server answers ``/v2/health/ready`` with 200 now."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def failed_models(self) -> list[str]:
        """``name: reason`` of every model the server could not load (its repository index), [] while unknown."""
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                index = json.loads(reply.read())
        except (urllib.error.URLError, OSError, ValueError):
            return []
        return [f"{m.get('name')}: {m.get('reason', '')}" for m in index if m.get("state") == "UNAVAILABLE"]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        """Until ready; BackendUnavailableError with the log's last lines if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendUnavailableError(f"tritonserver exited ({self.process.returncode}) while loading: "
                                              f"{self.log_tail(8)}")
            if self.ready():
                return
            failed = self.failed_models() or _load_failures(self.log_tail(200))
            if failed:
                raise BackendUnavailableError(f"tritonserver could not load {'; '.join(failed)}")
            time.sleep(0.2)
        raise BackendUnavailableError(f"tritonserver was not ready within {timeout:g} s: {self.log_tail(8)}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (Triton's graceful shutdown), then SIGKILL of the whole process group; the exit status."""
        with deferred_signals():  # a second Ctrl-C must not leave the server running
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # the backend stubs too, whatever became of the server
            return self.process.wait(timeout)


#: log lines of a model that failed to load (the Python backend may hang after its stub fails, never exiting)
_LOAD_FAILURE = re.compile(r"(Failed to preinitialize Python stub: .*|failed to load '.*)")


def _load_failures(log: str) -> list[str]:
    return [m.group(1).strip().rstrip('"') for m in _LOAD_FAILURE.finditer(log)][:3]


def _command(install: TritonInstall, repo: Path, backends: Path, host: str, http: int, grpc: int) -> list[str]:
    options = {"model-repository": repo, "backend-directory": backends, "cache-directory": install.caches,
               "http-address": host, "http-port": http, "grpc-address": host, "grpc-port": grpc,
               "allow-metrics": "false", "allow-sagemaker": "false", "strict-readiness": "true",
               "exit-on-error": "true", "exit-timeout-secs": 5, "log-verbose": 0}
    # no auto-complete: the server runs the config exactly as written
    return [str(install.server), *(f"--{key}={value}" for key, value in options.items()),
            "--" + "disable-auto-complete-config"]


@contextlib.contextmanager
def running_server(repo: Path, install: TritonInstall, http_port: int | None = None, grpc_port: int | None = None,
                   host: str = LOOPBACK, timeout: float = 120.0, log: IO[bytes] | None = None) -> Iterator[TritonServer]:
    """Start ``tritonserver`` on ``repo``, wait until ready (``timeout`` seconds), yield it, and stop it
    however the block ends. Ports default to free ones; the log goes to ``log`` or a private file."""
    with tempfile.TemporaryDirectory(prefix="convdeploy-triton-") as tmp:
        root = Path(tmp)
        backends = _private_backends(install, root)
        http, grpc = http_port or free_port(host), grpc_port or free_port(host)
        log_path = root / "tritonserver.log"
        with open(log_path, "wb") as own_log:
            process = subprocess.Popen(_command(install, repo, backends, host, http, grpc), stdin=subprocess.DEVNULL,
                                       stdout=log or own_log, stderr=subprocess.STDOUT, env=_environment(install),
                                       start_new_session=True)  # its own group: a terminal's Ctrl-C reaches us only
            server = TritonServer(process, host, http, grpc, log_path)
            try:
                server.wait_ready(timeout)
                yield server
            finally:
                server.stop()
