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
