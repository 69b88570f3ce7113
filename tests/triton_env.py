"""The separate Triton environment of the tests (`.venv-triton`, made by `make triton-env`): the
`tritonserver` of nvidia-pytriton, tritonclient and ONNX Runtime, whose numpy<2 and protobuf<7 pins
clash with the main environment. Tests reach it through subprocesses, always with a timeout."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRITON_ENV = Path(os.environ.get("CONVDEPLOY_TRITON_ENV", ROOT / ".venv-triton"))
PYTHON = TRITON_ENV / "bin" / "python"

requires_triton_env = pytest.mark.skipif(
    not PYTHON.is_file(), reason=f"the Triton environment {TRITON_ENV} is missing: run `make triton-env`")


def run_script(script: str, *args: str | Path, timeout: float = 120.0) -> Any:
    """Run ``tests/SCRIPT`` with the Triton environment's Python; its stdout is one JSON document."""
    done = subprocess.run([str(PYTHON), str(ROOT / "tests" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def parse_configs(*paths: Path) -> list[Any]:
    """Each config.pbtxt parsed into Triton's ModelConfig (tritonclient's message definitions), as a dict;
    a string for a config that does not parse."""
    return run_script("triton_parse_config.py", *paths, timeout=60.0)
