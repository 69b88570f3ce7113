"""ONNX Runtime behind the one ``run_all(x) -> {name: output}`` interface every runtime offers.

Every runtime takes a float32 NCHW ``np.ndarray``; ``run_all`` returns every output of the
model by name (``deploy.core.outputs``: the ONNX graph's output names are the flattened torch
output names), in graph order, and ``run`` the first one (timing and accuracy need only
that); ``describe()`` says where and with what it ran, for reports.
PyTorch is ``validators.runtimes.pytorch`` and TensorRT ``validators.runtimes.tensorrt``: this
module imports neither torch nor TensorRT, so ONNX-only commands start fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from deploy.core.errors import BackendUnavailableError, BadInputError, first_line

#: ``--provider`` names mapped to ONNX Runtime execution-provider names.
ORT_PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def as_float32_nchw(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 4:
        raise BadInputError(f"expected an NCHW input with 4 dimensions, got shape {arr.shape}: pass (N, C, H, W)")
    return np.ascontiguousarray(arr, dtype=np.float32)


#: ONNX Runtime's own log severity: 4 is FATAL only. Its ERROR lines (coloured, on stderr) would
#: otherwise print beside the one-line error the exception becomes
ORT_LOG_SEVERITY = 4


def quiet_session_options() -> ort.SessionOptions:
    """Session options whose logging stays silent (the process-wide default logger too: it
    speaks while a session is created, before the session's own level applies)."""
    ort.set_default_logger_severity(ORT_LOG_SEVERITY)
    opts = ort.SessionOptions()
    opts.log_severity_level = ORT_LOG_SEVERITY
    return opts


class OrtRuntime:
    """An ONNX model in an ONNX Runtime ``InferenceSession``.

    ``model`` is a path, the serialized bytes or an ``onnx.ModelProto``. ``provider`` is
    one of ``cpu``, ``cuda``, ``tensorrt``; a provider this onnxruntime build does not
    have raises ``BackendUnavailableError`` (exit 5) instead of silently falling back.
    ``spin=False`` stops the intra-op pool spinning between runs: with two sessions timed in
    turns, one session's spinning threads would otherwise steal the cores from the other.
    ``threads`` sets the intra-op pool (ONNX Runtime's default: one thread per physical core);
    ``concurrent``: on the CPU it may run in a thread of its own beside other runtimes.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes | onnx.ModelProto,
        threads: int | None = None,
        provider: str = "cpu",
        *,
        name: str | None = None,
        spin: bool = True,
    ) -> None:
        if provider not in ORT_PROVIDERS:
            raise BadInputError(f"unknown provider {provider!r}: choose one of {', '.join(ORT_PROVIDERS)}")
        ort_name = ORT_PROVIDERS[provider]
        available = ort.get_available_providers()
        if ort_name not in available:
            raise BackendUnavailableError(
                f"ONNX Runtime provider {provider!r} ({ort_name}) is not available in this onnxruntime "
                f"{ort.__version__} build (has: {', '.join(available)}): install the matching onnxruntime "
                "package or use the `provider` cpu"
            )
        opts = quiet_session_options()
        if not spin:  # idle pool threads sleep instead of spinning: needed when two sessions take turns
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.spin = spin
        if threads is not None:
            if threads < 1:
                raise BadInputError(f"threads must be >= 1, got {threads}: pass a positive thread count")
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        source: str | bytes
        if isinstance(model, onnx.ModelProto):
            source = model.SerializeToString()
        elif isinstance(model, (bytes, bytearray)):
            source = bytes(model)
        else:
            path = Path(model)
            if not path.is_file():
                raise BadInputError(f"ONNX file {path} does not exist or is not a file: check the path")
            source = str(path)
        try:
            self.session = ort.InferenceSession(source, sess_options=opts, providers=[ort_name])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = first_line(exc, 10_000)
            raise BadInputError(f"ONNX Runtime cannot load the model ({first}): re-export it or check the file") from exc
        active = self.session.get_providers()
        if not active or active[0] != ort_name:
            raise BackendUnavailableError(
                f"ONNX Runtime could not start provider {provider!r} ({ort_name}); it fell back to {active}: "
                "check the GPU driver/CUDA libraries or use the `provider` cpu"
            )
        self.provider = provider
        self.threads = threads
        self.concurrent = provider == "cpu"
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_name = self.output_names[0]
        self.name = name or f"onnxruntime-{provider}"

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run ``x`` through the session and return the first output."""
        (out,) = self.session.run([self.output_name], {self.input_name: as_float32_nchw(x)})
        return np.asarray(out)

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``x`` through the session and return every output by name, in graph order."""
        outs = self.session.run(self.output_names, {self.input_name: as_float32_nchw(x)})
        return {name: np.asarray(out) for name, out in zip(self.output_names, outs)}

    def describe(self) -> dict[str, Any]:
        """Device, provider, threads and library versions."""
        return {
            "runtime": self.name,
            "device": ort.get_device(),
            "provider": self.session.get_providers()[0],
            "threads": self.threads if self.threads is not None else "onnxruntime default",
            "spinning": self.spin,
            "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__},
        }


def all_node_outputs(onnx_model: onnx.ModelProto, x: np.ndarray, skip_constants: bool = True) -> dict[str, np.ndarray]:
    """Every node output of ``onnx_model`` for input ``x`` (a copy of the graph marks them all
    as graph outputs; ONNX Runtime CPU runs it), Constant nodes' outputs only if asked."""
    probe = onnx.ModelProto()
    probe.CopyFrom(onnx_model)
    present = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        if skip_constants and node.op_type == "Constant":
            continue
        for name in node.output:
            if name and name not in present:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
    opts = quiet_session_options()
    sess = ort.InferenceSession(probe.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})
    return {n: np.asarray(v) for n, v in zip(names, values)}
