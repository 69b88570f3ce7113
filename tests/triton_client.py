"""Run with the Triton environment's Python: requests to a running tritonserver with tritonclient.

    triton_client.py parity SPEC   every batch of SPEC's .npz sent over HTTP and gRPC; outputs saved to an .npz
    triton_client.py load SPEC     bounded concurrent load (benchmarks/triton_throughput.measure) per model

Prints one JSON document on stdout."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.triton_throughput import _client, infer, measure, samples  # noqa: E402 - after the path is set


def parity(spec: dict) -> dict:
    inputs = np.load(spec["inputs"])
    saved = {}
    for protocol in ("http", "grpc"):
        client = _client(protocol, spec[protocol])
        try:
            for key in inputs.files:
                outs = infer(client, protocol, spec["model"], spec["input"], spec["outputs"], inputs[key])
                saved.update({f"{protocol}/{key}/{name}": o for name, o in zip(spec["outputs"], outs)})
        finally:
            client.close()
    np.savez(spec["out"], **saved)
    return {"saved": sorted(saved)}


def load(spec: dict) -> list:
    xs = samples(spec["shape"], count=8)
    return [asdict(measure(protocol, spec[protocol], model, spec["onnx"], xs, c, spec["requests"], time_limit=60.0))
            for protocol in spec["protocols"] for model in spec["models"] for c in spec["concurrency"]]


if __name__ == "__main__":
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(parity(spec) if mode == "parity" else load(spec)))
