"""Where an ONNX model's time goes: ONNX Runtime's own profiler, aggregated by op type and by node.

ONNX Runtime (``SessionOptions.enable_profiling``) writes one trace event per kernel call
(``<node>_kernel_time``, its op in ``args.op_name``) and one ``model_run`` event per run.
``profile_onnx`` warms up, profiles ``runs`` runs, keeps the kernel events inside the timed
runs' ``model_run`` windows and averages them per run: by op type (the layout reorders
ONNX Runtime inserts, ``ReorderInput``/``ReorderOutput``, are op types of their own) and
by node. The session is the one ``deploy bench`` times, with profiling switched on; its
raw trace file goes to a temporary folder and is removed.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from deploy.core.errors import BadInputError, first_line
from validators.runtimes.onnxruntime import as_float32_nchw, quiet_session_options

_KERNEL = "_kernel_time"


@dataclass
class OpTime:
    """One op type (or one node): mean time per run, share of the kernel total, calls per run."""

    name: str
    op: str
    ms: float
    share: float
    calls: float


@dataclass
class OnnxProfile:
    """The aggregated profile of ``runs`` runs of one model on one input."""

    model: str
    input_shape: tuple[int, ...]
    threads: int | None
    runs: int
    run_ms: float  # mean ``model_run`` duration
    kernel_ms: float  # mean sum of the kernel times per run
    by_op: list[OpTime] = field(default_factory=list)
    by_node: list[OpTime] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def op_ms(self, op: str) -> float:
        """Mean time per run of ``op`` (0 when the model has none)."""
        return next((o.ms for o in self.by_op if o.op == op), 0.0)

    def to_dict(self) -> dict[str, Any]:
        rows = lambda items: [vars(i) for i in items]  # noqa: E731 - two uses, one line
        return {"model": self.model, "input_shape": list(self.input_shape), "threads": self.threads,
                "runs": self.runs, "run_ms": self.run_ms, "kernel_ms": self.kernel_ms,
                "by_op": rows(self.by_op), "by_node": rows(self.by_node), "versions": dict(self.versions)}


def _read_trace(path: Path) -> Any:
    """ONNX Runtime's trace file; one it could not write whole (a full disk) is exit 2."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"ONNX Runtime's profile {path} could not be written whole ({exc}): "
                            "free some space in the temporary directory") from exc


def _session(model: str | os.PathLike[str] | onnx.ModelProto, threads: int | None, prefix: str,
             spin: bool) -> ort.InferenceSession:
    opts = quiet_session_options()
    opts.enable_profiling = True
    opts.profile_file_prefix = prefix
    if not spin:  # two sessions taking turns: idle pool threads must sleep (validators.runtimes.onnxruntime)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise BadInputError(f"`threads` must be >= 1, got {threads}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first = first_line(exc, 10_000)
        raise BadInputError(f"ONNX Runtime cannot load the model ({first}): re-export it or check the file") from exc


def _timed_kernels(events: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """The kernel events inside the last ``runs`` ``model_run`` windows."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-runs:]
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith(_KERNEL)]
    return [e for e in kernels if any(lo <= e["ts"] <= hi for lo, hi in windows)]


def _aggregate(kernels: list[dict[str, Any]], runs: int, key: str) -> list[OpTime]:
    total_us = sum(e["dur"] for e in kernels) or 1.0
    acc: dict[str, list[Any]] = {}
    for e in kernels:
        op = str(e.get("args", {}).get("op_name", "?"))
        name = op if key == "op" else str(e["name"])[: -len(_KERNEL)]
        entry = acc.setdefault(name, [op, 0.0, 0])
        entry[1] += e["dur"]
        entry[2] += 1
    rows = [OpTime(name, op, us / runs / 1e3, us / total_us, calls / runs) for name, (op, us, calls) in acc.items()]
    return sorted(rows, key=lambda r: -r.ms)


def profile_models(models: Sequence[str | os.PathLike[str] | onnx.ModelProto], x: np.ndarray, *,
                   threads: int | None = None, runs: int = 10, warmup: int = 3) -> list[OnnxProfile]:
    """Profile ``runs`` runs of each model on ``x`` (ONNX Runtime CPU) after ``warmup`` untimed
    ones; two models take turns run by run (A B, B A, …) so that the machine's drift is shared."""
    if runs < 1 or warmup < 0:
        raise BadInputError(f"`iters` must be >= 1 and `warmup` >= 0, got {runs} and {warmup}")
    x = as_float32_nchw(x)
    with tempfile.TemporaryDirectory(prefix="convdeploy-profile-") as tmp:
        sessions = [_session(m, threads, str(Path(tmp) / f"ort{i}"), spin=len(models) == 1)
                    for i, m in enumerate(models)]
        feeds = [{s.get_inputs()[0].name: x} for s in sessions]
        for i in range(warmup + runs):
            order = range(len(sessions)) if i % 2 == 0 else reversed(range(len(sessions)))
            for k in order:
                sessions[k].run(None, feeds[k])
        traces = [_read_trace(Path(s.end_profiling())) for s in sessions]
    return [_summary(m, x, threads, runs, events) for m, events in zip(models, traces)]


def profile_onnx(model: str | os.PathLike[str] | onnx.ModelProto, x: np.ndarray, *, threads: int | None = None,
                 runs: int = 10, warmup: int = 3) -> OnnxProfile:
    """``profile_models`` of one model."""
    return profile_models([model], x, threads=threads, runs=runs, warmup=warmup)[0]


def _summary(model: str | os.PathLike[str] | onnx.ModelProto, x: np.ndarray, threads: int | None, runs: int,
             events: list[dict[str, Any]]) -> OnnxProfile:
    kernels = _timed_kernels(events, runs)
    run_us = [e["dur"] for e in sorted(events, key=lambda e: e["ts"]) if e.get("name") == "model_run"][-runs:]
    name = Path(model).name if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
    return OnnxProfile(name, tuple(int(d) for d in x.shape), threads, runs, float(np.mean(run_us)) / 1e3,
                       sum(e["dur"] for e in kernels) / runs / 1e3, _aggregate(kernels, runs, "op"),
                       _aggregate(kernels, runs, "node"), {"onnxruntime": ort.__version__, "onnx": onnx.__version__})
