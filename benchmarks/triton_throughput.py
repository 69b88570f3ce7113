"""Throughput of an ONNX model served by a real `tritonserver`, at concurrency 1, 4 and 8, with and
without Triton's dynamic batching, over gRPC and HTTP (tritonclient).

One server (the PyPI `tritonserver` of `.venv-triton`, loopback only) serves the model twice from
one repository that `deploy serve` would write: `plain` (no dynamic batching) and `batched`
(`dynamic_batching`, preferred batch sizes 4 and 8); one CPU instance each, one ONNX Runtime
thread. Each request is one image; every answer is compared with ONNX Runtime run on the ONNX file
directly (max abs error printed). The cells run in rounds, the two models interleaved within each
(plain, batched / batched, plain, …) so drift cancels; printed: median images/s and request
latency per cell, and the batched/plain throughput ratio per round. Never asserts a time.

The server side runs here (convdeploy's environment); the load runs in the Triton environment
(tritonclient pins numpy<2), as `.venv-triton/bin/python benchmarks/triton_throughput.py --load SPEC`.

    .venv/bin/deploy zoo create resnet20 -o out/r20.pt && .venv/bin/deploy export out/r20.pt -o out/r20.onnx
    .venv/bin/python benchmarks/triton_throughput.py out/r20.onnx --requests 400 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 4, 8)
MODELS = ("plain", "batched")


@dataclass
class Cell:
    """One measurement: a model at a concurrency over a protocol."""

    protocol: str
    model: str
    concurrency: int
    requests: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p90_ms: float
    max_abs_err: float
    max_abs_ref: float


# ---------------------------------------------------------------- the load (Triton environment)

def _client(protocol: str, url: str) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(url=url)
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url=url, connection_timeout=30.0, network_timeout=30.0)


def infer(client: Any, protocol: str, model: str, input_name: str, outputs: list[str], x: Any) -> list[Any]:
    """One request of the batch ``x``; the outputs by name, in order."""
    if protocol == "grpc":
        import tritonclient.grpc as mod
    else:
        import tritonclient.http as mod  # type: ignore[no-redef]
    inp = mod.InferInput(input_name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], outputs=[mod.InferRequestedOutput(n) for n in outputs],
                          **({"client_timeout": 30.0} if protocol == "grpc" else {}))
    return [result.as_numpy(n) for n in outputs]


def samples(shape: list[int], count: int = 16, seed: int = 0) -> Any:
    import numpy as np

    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)


def reference(onnx_path: str, xs: Any) -> tuple[str, list[str], list[list[Any]]]:
    """ONNX Runtime on the file itself, one image at a time: input name, output names, outputs per sample."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    name = session.get_inputs()[0].name
    return name, names, [session.run(names, {name: xs[i:i + 1]}) for i in range(len(xs))]


def measure(protocol: str, url: str, model: str, onnx_path: str, xs: Any, concurrency: int, requests: int,
            time_limit: float = 120.0, ref: tuple[str, list[str], list[list[Any]]] | None = None) -> Cell:
    """``requests`` one-image requests from ``concurrency`` threads (each its own client); stops early at
    ``time_limit`` seconds. Every answer is compared with ONNX Runtime on the file."""
    import numpy as np

    input_name, outputs, expected = ref or reference(onnx_path, xs)
    lock, state = threading.Lock(), {"next": 0, "err": 0.0, "errors": []}
    latencies: list[float] = []
    deadline = time.monotonic() + time_limit

    def worker() -> None:
        client = _client(protocol, url)
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = state["next"]
                    if i >= requests:
                        return
                    state["next"] = i + 1
                k = i % len(xs)
                t0 = time.perf_counter()
                got = infer(client, protocol, model, input_name, outputs, xs[k:k + 1])
                dt = time.perf_counter() - t0
                err = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected[k]))
                with lock:
                    latencies.append(dt)
                    state["err"] = max(state["err"], err)
        except Exception as exc:  # noqa: BLE001 - reported with the cell, never swallowed
            with lock:
                state["errors"].append(f"{type(exc).__name__}: {exc}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_limit + 30)
    seconds = time.perf_counter() - t0
    if state["errors"]:
        raise RuntimeError(f"{protocol} {model} x{concurrency}: {state['errors'][0]}")
    done = len(latencies)
    ms = sorted(1000 * v for v in latencies) or [float("nan")]
    ref_max = max(float(np.max(np.abs(o))) for outs in expected for o in outs)
    return Cell(protocol, model, concurrency, done, seconds, done / seconds, ms[len(ms) // 2],
                ms[min(len(ms) - 1, int(0.9 * len(ms)))], float(state["err"]), ref_max)


def load_main(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cell of ``spec``, in rounds, the models interleaved (order alternating per round)."""
    xs = samples(spec["shape"])
    ref = reference(spec["onnx"], xs)
    cells = []
    for r in range(spec["rounds"]):
        for protocol in spec["protocols"]:
            for c in spec["concurrency"]:
                models = spec["models"] if r % 2 == 0 else list(reversed(spec["models"]))
                for m in models:
                    cell = measure(protocol, spec[protocol], m, spec["onnx"], xs, c, spec["requests"], ref=ref)
                    cells.append({"round": r, **asdict(cell)})
    return cells


# ---------------------------------------------------------------- the server side (convdeploy's environment)

def write_models(onnx_path: Path, repo: Path, max_batch: int, queue_delay_us: int) -> tuple[int, ...]:
    """`plain` and `batched` in ``repo``: the repository `deploy serve` writes, without and with the batcher."""
    from deploy.serving.artifact import read_artifact
    from deploy.serving.python_backend import serve_plan, write_serve_repository
    from deploy.serving.repository import TritonOptions

    art = read_artifact(onnx_path)
    for name, batching in (("plain", False), ("batched", True)):
        opts = TritonOptions(name=name, max_batch=max_batch, dynamic_batching=batching,
                             preferred_batch=(4, 8) if max_batch >= 8 else (), queue_delay_us=queue_delay_us)
        write_serve_repository(serve_plan(art, opts, threads=1), repo)
    assert art.input_shape is not None, "the model records no input shape"
    return art.input_shape


def run_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    from deploy.serving.server import find_triton, running_server

    install = find_triton(args.triton_env)
    with tempfile.TemporaryDirectory(prefix="triton-bench-") as tmp:
        repo = Path(tmp)
        shape = write_models(args.model, repo, 8, args.queue_delay_us)
        with running_server(repo, install, timeout=120) as server:
            spec = {"onnx": str(args.model), "shape": list(shape), "grpc": server.grpc_url, "http": server.http_url,
                    "models": list(MODELS), "concurrency": list(CONCURRENCY), "requests": args.requests,
                    "rounds": args.rounds, "protocols": args.protocols}
            done = subprocess.run([str(install.env / "bin" / "python"), __file__, "--load", json.dumps(spec)],
                                  capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"the load failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout)


def report(cells: list[dict[str, Any]]) -> None:
    print("| protocol | concurrency | plain img/s | batched img/s | batched/plain (per round) | p50 ms plain / batched |")
    print("|---|---|---|---|---|---|")
    keys = sorted({(c["protocol"], c["concurrency"]) for c in cells}, key=lambda k: (k[0] != "grpc", k[1]))
    for protocol, conc in keys:
        rows = {m: [c for c in cells if (c["protocol"], c["concurrency"], c["model"]) == (protocol, conc, m)]
                for m in MODELS}
        med = {m: statistics.median(c["images_per_s"] for c in rows[m]) for m in MODELS}
        p50 = {m: statistics.median(c["p50_ms"] for c in rows[m]) for m in MODELS}
        ratios = [b["images_per_s"] / p["images_per_s"] for p, b in zip(rows["plain"], rows["batched"])]
        print(f"| {protocol} | {conc} | {med['plain']:.0f} | {med['batched']:.0f} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}–{max(ratios):.2f}) | {p50['plain']:.2f} / {p50['batched']:.2f} |")
    worst = max(c["max_abs_err"] / c["max_abs_ref"] for c in cells)
    print(f"\nanswers: {sum(c['requests'] for c in cells)}; largest error vs ONNX Runtime on the file: "
          f"{worst:.2e} x max|ref|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?", help="model.onnx (a convdeploy export)")
    parser.add_argument("--requests", type=int, default=400, help="one-image requests per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-delay-us", type=int, default=100)
    parser.add_argument("--protocols", nargs="+", default=["grpc", "http"], choices=["grpc", "http"])
    parser.add_argument("--triton-env", type=Path, default=ROOT / ".venv-triton")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole load")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the Triton-environment half: a JSON spec
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load_main(json.loads(args.load))))
        return
    if args.model is None:
        parser.error("give model.onnx")
    sys.path.insert(0, str(ROOT))
    report(run_benchmark(args))


if __name__ == "__main__":
    main()
