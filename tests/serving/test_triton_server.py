"""A real tritonserver (nvidia-pytriton's, from .venv-triton) serving a convdeploy export through the
repository `deploy serve` writes: outputs over HTTP and gRPC equal ONNX Runtime on the ONNX file, a
bounded concurrent load with and without dynamic batching answers every request correctly, and the
server is always stopped. Loopback only, free ports, timeouts everywhere."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from deploy.core.errors import BackendUnavailableError
from deploy.serving.artifact import read_artifact
from deploy.serving.python_backend import serve_plan, write_serve_repository
from deploy.serving.repository import TritonOptions
from deploy.serving.server import find_triton, running_server
from tests.triton_env import TRITON_ENV, requires_triton_env, run_script

pytestmark = [pytest.mark.triton, requires_triton_env]


@pytest.fixture(scope="module")
def served(folded_export, tmp_path_factory):
    """A running server with a ResNet-20 export twice: `plain` and `batched` (dynamic batching); stopped at the end."""
    exported = folded_export("resnet20", "plain", 32)
    assert exported.run.exit_code == 0, exported.run.stderr
    repo = tmp_path_factory.mktemp("repo")
    art = read_artifact(exported.onnx_path)
    for name, batching in (("plain", False), ("batched", True)):
        opts = TritonOptions(name=name, max_batch=8, dynamic_batching=batching, preferred_batch=(4, 8) if batching else ())
        write_serve_repository(serve_plan(art, opts, threads=1), repo)
    with running_server(repo, find_triton(TRITON_ENV), timeout=120) as server:
        yield server, exported.onnx_path, art


def test_served_outputs_equal_onnx_runtime_over_http_and_grpc(served, tmp_path):
    server, onnx_path, art = served
    rng = np.random.default_rng(1)
    batches = {"b1": rng.standard_normal((1, *art.input_shape)).astype(np.float32),
               "b3": rng.standard_normal((3, *art.input_shape)).astype(np.float32)}
    np.savez(tmp_path / "in.npz", **batches)
    names = [t.name for t in art.outputs]
    for model in ("plain", "batched"):
        spec = {"http": server.http_url, "grpc": server.grpc_url, "model": model, "input": art.inputs[0].name,
                "outputs": names, "inputs": str(tmp_path / "in.npz"), "out": str(tmp_path / f"{model}.npz")}
        run_script("triton_client.py", "parity", json.dumps(spec), timeout=120)
        got = np.load(tmp_path / f"{model}.npz")
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])  # this venv's ORT
        for key, x in batches.items():
            want = session.run(names, {art.inputs[0].name: x})
            for protocol in ("http", "grpc"):
                for name, ref in zip(names, want):
                    out = got[f"{protocol}/{key}/{name}"]
                    assert out.shape == ref.shape and out.dtype == np.float32
                    bound = 1e-5 * float(np.max(np.abs(ref)))
                    assert float(np.max(np.abs(out - ref))) <= bound, (model, protocol, key, name)
                    assert (out.argmax(1) == ref.argmax(1)).all()


def test_bounded_load_with_and_without_dynamic_batching_answers_correctly(served):
    """Concurrency 1, 4 and 8 on both models and protocols: every request answered, every answer equal to ONNX
    Runtime on the file (dynamic batching must not mix up whose image is whose). Speed is not asserted."""
    server, onnx_path, art = served
    spec = {"http": server.http_url, "grpc": server.grpc_url, "onnx": str(onnx_path), "shape": list(art.input_shape),
            "models": ["plain", "batched"], "concurrency": [1, 4, 8], "requests": 24, "protocols": ["grpc", "http"]}
    cells = run_script("triton_client.py", "load", json.dumps(spec), timeout=300)
    assert len(cells) == 12
    for cell in cells:
        assert cell["requests"] == 24, cell
        assert cell["max_abs_err"] <= 1e-5 * cell["max_abs_ref"], cell


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_server_is_stopped_when_the_block_fails(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with running_server(repo, find_triton(TRITON_ENV), timeout=60) as server:
            assert server.ready()
            raise RuntimeError("boom")
    assert server.process.poll() is not None and _port_free(server.http_port) and _port_free(server.grpc_port)


def test_a_model_that_cannot_load_is_one_error_with_the_log(tmp_path):
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n')
    with pytest.raises(BackendUnavailableError, match="could not load .*model.py"):
        with running_server(repo, find_triton(TRITON_ENV), timeout=60):
            pass


def test_find_triton_names_what_is_missing(tmp_path):
    with pytest.raises(BackendUnavailableError, match="no tritonserver in the Python environment"):
        find_triton(tmp_path)
    site = Path(TRITON_ENV)
    assert find_triton(site).server.name == "tritonserver"


def _infer_json(http_url: str, model: str, name: str, x: np.ndarray) -> dict:
    """One KServe v2 JSON request (no tritonclient needed on this side)."""
    import urllib.request

    body = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://{http_url}/v2/models/{model}/infer", data=body),
                                timeout=30) as reply:
        return json.loads(reply.read())


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_deploy_serve_serves_and_stops_cleanly_on_a_signal(folded_export, signum):
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from deploy.serving.server import free_port

    exported = folded_export("resnet20", "plain", 32)
    http, grpc = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "serve", str(exported.onnx_path), "--name", "r20",
                             "--port", str(http), "--grpc-port", str(grpc), "--triton-env", str(TRITON_ENV),
                             "--threads", "1", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any(line.startswith("infer:") for line in lines) and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.25)
        assert _ready(http), proc.stderr.read() if proc.poll() is not None else "not ready in 90 s"
        art = read_artifact(exported.onnx_path)
        x = np.random.default_rng(2).standard_normal((2, *art.input_shape)).astype(np.float32)
        reply = _infer_json(f"127.0.0.1:{http}", "r20", art.inputs[0].name, x)
        got = np.asarray(reply["outputs"][0]["data"], dtype=np.float32).reshape(reply["outputs"][0]["shape"])
        ref = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"]).run(
            None, {art.inputs[0].name: x})[0]
        assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))
        os.kill(proc.pid, getattr(signal, signum))
        assert proc.wait(45) == 0, proc.stderr.read()
        reader.join(10)
        out = "".join(lines)
        assert f"stopped tritonserver ({signum})" in out and f"kill -TERM {proc.pid}" in out
        assert _port_free(http) and _port_free(grpc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _ready(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_deploy_serve_refuses_an_engine_and_a_missing_environment(tmp_path, deploy_cli):
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"engine")
    run = deploy_cli("serve", engine, "--triton-env", TRITON_ENV)
    assert run.exit_code == 2  # no engine.plan.json beside it, and an engine needs the Triton container anyway
    run = deploy_cli("serve", engine, "--triton-env", tmp_path)
    assert run.exit_code == 5 and "no tritonserver in the Python environment" in run.one_error_line()
