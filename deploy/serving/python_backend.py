"""The repository `deploy serve` runs: an ONNX file in Triton's Python backend, on ONNX Runtime.

The ``tritonserver`` that installs from PyPI (in ``nvidia-pytriton``) has the Python backend only,
so the model is served by a generated ``model.py`` that runs ``model.onnx`` with ONNX Runtime.
The config is the one ``deploy triton`` writes for the file (same inputs, outputs, batching,
warm-up) with ``backend: "python"`` instead of ``platform: "onnxruntime_onnx"`` and CPU instances,
so the server loads the production config's every field. ``model.py`` batches what the dynamic
batcher hands it: the requests of one ``execute`` call are concatenated along the batch axis and
run as one ONNX Runtime call (the Python backend leaves batching to the model).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from deploy.core.errors import BadInputError
from deploy.serving.artifact import ONNX, ServedArtifact
from deploy.serving.repository import RepositoryPlan, TritonOptions, plan_repository, write_repository

MODEL_PY = '''"""Triton Python-backend model written by convdeploy: runs model.onnx (beside this file) on ONNX Runtime."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]
        self.batching = config.get("max_batch_size", 0) > 0

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        results = [None] * len(requests)
        groups = {}
        for i, a in enumerate(arrays):  # one ONNX Runtime run per input shape (all of them, with a fixed H and W)
            groups.setdefault(a.shape[1:] if self.batching else ("request", i), []).append(i)
        for members in groups.values():
            batch = np.concatenate([arrays[i] for i in members]) if len(members) > 1 else arrays[members[0]]
            outs = self.session.run(self.outputs, {self.input: batch})
            start = 0
            for i in members:
                n = arrays[i].shape[0]
                results[i] = [o[start:start + n] if self.batching else o for o in outs]
                start += n
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(out))
                                                           for name, out in zip(self.outputs, outs)])
                for outs in results]
'''


def serve_plan(art: ServedArtifact, opts: TritonOptions, threads: int = 0) -> RepositoryPlan:
    """The Python-backend model directory for an ONNX artifact (``threads``: ONNX Runtime's intra-op threads
    per instance, 0 for its default)."""
    if art.kind != ONNX:
        raise BadInputError(f"{art.path}: deploy serve runs an .onnx on CPU (this server has no TensorRT); serve an "
                            "engine in the Triton container: `deploy triton ENGINE.plan -o REPO`")
    if threads < 0:
        raise BadInputError(f"`threads` {threads} must be 0 (ONNX Runtime's default) or more")
    python = replace(opts, kind="cpu", backend="python", ort_tensorrt=None,
                     parameters={**opts.parameters, "intra_op_threads": str(threads)})
    return plan_repository([art], python)


def write_serve_repository(plan: RepositoryPlan, repo: Path) -> list[Path]:
    """``plan`` written under ``repo`` with the generated ``model.py`` beside ``model.onnx``."""
    return write_repository(plan, repo, extra=(("model.py", MODEL_PY.encode()),))
