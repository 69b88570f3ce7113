"""Which TensorRT and GPU are here, and what an engine file was built for.

The runtime side of TensorRT, below both the engine builder (``exporters.tensorrt.build``) and
the engine runtime (``validators.runtimes.tensorrt``): availability (``import_tensorrt`` is the
project's only import of ``tensorrt``), the running environment, the batch profile, and
``engine.plan.json`` with the version / device compatibility gate. Everything here but
``import_tensorrt`` and ``running_environment`` is plain Python, tested on CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from deploy.core.errors import BackendUnavailableError, BadInputError

ENGINE_FORMAT = "convdeploy-engine/1"
ENGINE_SUFFIXES = (".plan", ".engine")
CPU_HINT = "`deploy bench model.onnx` runs on CPU"
#: the TensorRT majors whose Python API the code is checked against (tests/tensorrt/test_tensorrt_api.py)
SUPPORTED_MAJORS = (10, 11)
INSTALL_HINT = "pip install 'tensorrt>=10,<12' on a machine with an NVIDIA GPU"


def import_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module (the project's only import of it)."""
    import tensorrt  # noqa: PLC0415 - optional, GPU-only backend: everything else works where it is missing

    return tensorrt


def tensorrt_major(version: str) -> int:
    """``"10.13.3.9"`` -> 10 (BadInputError for a version string that does not start with a number)."""
    head = str(version).split(".")[0]
    if not head.isdigit():
        raise BadInputError(f"cannot read a TensorRT major version from {version!r}: reinstall TensorRT")
    return int(head)


def tensorrt_available() -> tuple[bool, str]:
    """(True, "TensorRT x.y on <GPU>") or (False, what is missing). Never raises."""
    try:
        trt = import_tensorrt()
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install raising OSError
        kind = "not installed" if isinstance(exc, ImportError) else f"not importable ({type(exc).__name__}: {exc})"
        return False, f"TensorRT is {kind} ({INSTALL_HINT})"
    try:
        version = str(trt.__version__)
        if tensorrt_major(version) not in SUPPORTED_MAJORS:
            return False, (f"TensorRT {version} is not supported: convdeploy runs on TensorRT "
                           f"{' and '.join(map(str, SUPPORTED_MAJORS))} ({INSTALL_HINT})")
        import torch  # noqa: PLC0415 - torch is heavy and only the GPU path needs it: ONNX-only commands stay torch-free

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        return True, f"TensorRT {version} on {torch.cuda.get_device_name(0)}"
    except Exception as exc:  # noqa: BLE001 - defensive: this function must not raise
        return False, f"TensorRT/CUDA check failed: {type(exc).__name__}: {exc}"


def require_tensorrt() -> Any:
    """Return the tensorrt module or raise BackendUnavailableError (exit 5) naming what is missing."""
    ok, reason = tensorrt_available()
    if not ok:
        raise BackendUnavailableError(f"{reason}; {CPU_HINT}")
    return import_tensorrt()


def running_environment() -> dict[str, Any]:
    """TensorRT version, GPU name and compute capability of this machine (GPU only)."""
    trt = require_tensorrt()
    import torch  # noqa: PLC0415 - torch is heavy and only the GPU path needs it: ONNX-only commands stay torch-free

    major, minor = torch.cuda.get_device_capability(0)
    return {"tensorrt_version": str(trt.__version__), "gpu_name": torch.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}"}


@dataclass(frozen=True)
class BatchProfile:
    """One TensorRT optimization profile: min/opt/max NCHW shapes (batch and, where dynamic, H/W differ)."""

    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input_name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchProfile":
        return cls(input_name=d["input"], min=tuple(d["min"]), opt=tuple(d["opt"]), max=tuple(d["max"]))

    def admits(self, shape: Sequence[int]) -> bool:
        """Whether an input of ``shape`` lies inside [min, max]."""
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))


def metadata_path(engine_path: str | Path) -> Path:
    """``engine.plan`` -> ``engine.plan.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def load_engine_metadata(engine_path: str | Path) -> dict[str, Any] | None:
    """Read engine.plan.json beside the engine; None when absent."""
    meta = metadata_path(engine_path)
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        raise BadInputError(f"{meta} is not valid JSON: rebuild the engine with `deploy build`") from None
    if not isinstance(data, dict) or data.get("format") != ENGINE_FORMAT:
        raise BadInputError(f"{meta} is not a convdeploy engine record: rebuild the engine with `deploy build`")
    return data


def check_engine_compat(meta: dict[str, Any], env: dict[str, Any]) -> list[str]:
    """Refuse an engine built for another TensorRT version or GPU architecture.

    An engine is tied to the exact TensorRT version and the compute capability it
    was built on (BadInputError, exit 2, with the rebuild command). A different GPU
    name with the same compute capability runs but may be slower: returned as a warning.
    """
    built = (meta.get("tensorrt_version"), str(meta.get("compute_capability")))
    here = (env.get("tensorrt_version"), str(env.get("compute_capability")))
    if built != here:
        raise BadInputError(
            f"engine was built with TensorRT {built[0]} for compute capability {built[1]} "
            f"({meta.get('gpu_name')}), this machine has TensorRT {here[0]} and {here[1]} "
            f"({env.get('gpu_name')}): rebuild it here with "
            f"`deploy build {meta.get('source_onnx', 'model.onnx')} -o ENGINE.plan`")
    warnings = []
    if meta.get("gpu_name") != env.get("gpu_name"):
        warnings.append(f"engine was tuned on {meta.get('gpu_name')}, running on {env.get('gpu_name')}: "
                        "timings may be off; rebuild here for a fair number")
    return warnings


def check_batch_in_profile(meta: dict[str, Any] | None, batch: int) -> None:
    """BadInputError when ``batch`` lies outside the engine's profile."""
    if not meta or "profile" not in meta:
        return
    prof = BatchProfile.from_dict(meta["profile"])
    if not prof.min[0] <= batch <= prof.max[0]:
        raise BadInputError(f"`batch` {batch} is outside the engine's profile [{prof.min[0]}, {prof.max[0]}]: "
                            f"rebuild with `opt_batch` {batch} and `max_batch` {max(batch, prof.max[0])}")
