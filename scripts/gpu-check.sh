#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU and a CUDA build of PyTorch
# but no network (under 8 minutes on one GPU):
#
#   bash scripts/gpu-check.sh [OUT_DIR]          (default: out/gpu-check-YYYYmmdd-HHMMSS)
#
# 1. installs this checkout with `pip install --no-deps --no-build-isolation -e .` into the Python
#    that has the machine's torch (PYTHON, default python3); where that environment refuses
#    (externally managed), into .venv-gpu created with --system-site-packages beside it. Nothing
#    is downloaded: numpy, onnx, onnxruntime, onnxscript, onnxsim, typer, rich, matplotlib, pytest
#    must be there already (the script names what is missing);
# 2. the `gpu`-marked tests (CUDA PyTorch; the `tensorrt` ones too where TensorRT imports);
# 3. `deploy claims --quick --backend torch --device cuda`;
# 4. where `import tensorrt` works (TensorRT 10 or 11, with polygraphy and onnxconverter-common):
#    a zoo model exported with `--engine` in fp32 and fp16 (build, run, parity against ONNX
#    Runtime), then `deploy bench` of the engines and of the checkpoint on PyTorch CUDA;
#    `deploy matrix` of the zoo model (its CUDA rows, and its TensorRT rows where TensorRT imports).
#
# Everything goes to OUT_DIR: gpu-check.log (all output), pytest.xml, claims-torch/ (claims.json,
# .md, .png), matrix/ (matrix.md, .json, .png), bench-*.json, and summary.json (each step's exit code and seconds, the versions).
# Exit code: 0 when every step that ran passed (exit 6 of claims, a refuted claim, counts as ran).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-out/gpu-check-$(date +%Y%m%d-%H%M%S)}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
STEPS="$OUT/.steps"
: >"$LOG"
: >"$STEPS"

say() { echo "gpu-check: $*" | tee -a "$LOG"; }

# step NAME SECONDS COMMAND...: run with a time limit, log everything, record exit code and time
step() {
    local name=$1 limit=$2
    shift 2
    say "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$STEPS"
    say "== $name: exit $rc in $((SECONDS - start)) s"
    return "$rc"
}

# ---------------------------------------------------------------- 1. install, no network
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
    say "ERROR: $PYTHON has no CUDA PyTorch with a visible GPU (torch.cuda.is_available() is False)"
    exit 5
fi
missing=$("$PYTHON" - <<'EOF'
import importlib.util
need = ["numpy", "onnx", "onnxruntime", "onnxscript", "onnxsim", "typer", "rich", "matplotlib", "pytest", "setuptools"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
    say "ERROR: not installed next to torch, and this script downloads nothing: $missing"
    exit 2
fi
if ! "$PYTHON" -m pip install --no-deps --no-build-isolation --quiet -e . >>"$LOG" 2>&1; then
    say "pip refused this environment: installing into .venv-gpu (--system-site-packages) instead"
    "$PYTHON" -m venv --system-site-packages .venv-gpu >>"$LOG" 2>&1 || { say "ERROR: cannot create .venv-gpu"; exit 2; }
    PYTHON=.venv-gpu/bin/python
    "$PYTHON" -m pip install --no-deps --no-build-isolation --quiet -e . >>"$LOG" 2>&1 \
        || { say "ERROR: pip install --no-deps -e . failed (see $LOG)"; exit 2; }
fi
DEPLOY=("$PYTHON" -m deploy.cli)
say "python $("$PYTHON" -c 'import sys; print(sys.executable)'), $("$PYTHON" -c \
    'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")')"
TRT=$("$PYTHON" -c "from validators.runtimes.tensorrt_env import tensorrt_available as t; ok, why = t(); print(('yes: ' if ok else 'no: ') + why)")
say "TensorRT: $TRT"

# ---------------------------------------------------------------- 2. gpu-marked tests
step "pytest -m gpu" 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu --junitxml="$OUT/pytest.xml" \
    tests/bench/test_torch_bench.py tests/claims/test_claims_torch.py tests/tensorrt/test_tensorrt.py

# ---------------------------------------------------------------- 3. the claims on PyTorch CUDA
step "claims --backend torch --device cuda" 240 \
    "${DEPLOY[@]}" claims --quick --backend torch --device cuda -o "$OUT/claims-torch"

# ---------------------------------------------------------------- 4. TensorRT, where it imports
WORK="$OUT/trt"
mkdir -p "$WORK"
step "zoo create resnet20 (doconv)" 60 "${DEPLOY[@]}" zoo create resnet20 --conv doconv -o "$WORK/r20.pt"
step "matrix r20.pt (every format)" 300 "${DEPLOY[@]}" matrix "$WORK/r20.pt" --exporter torchscript --duration 1 \
    --samples 4 -o "$OUT/matrix"
step "bench r20.pt on torch cuda (CUDA graph)" 60 "${DEPLOY[@]}" bench "$WORK/r20.pt" --backend torch --device cuda \
    --cuda-graph --batch 8 --iters 200 --json-file "$OUT/bench-torch-cuda.json"
if [[ $TRT == yes* ]]; then
    for precision in fp32 fp16; do
        flag=()
        [ "$precision" = fp16 ] && flag=(--fp16)
        step "export --engine ($precision)" 120 "${DEPLOY[@]}" export "$WORK/r20.pt" --fold --exporter torchscript \
            -o "$WORK/r20-$precision.onnx" --engine "$WORK/r20-$precision.plan" --max-batch 8 --opt-batch 8 \
            --timing-cache "$WORK/timing.cache" "${flag[@]}"
        step "bench engine ($precision)" 60 "${DEPLOY[@]}" bench "$WORK/r20-$precision.plan" --batch 8 --iters 200 \
            --json-file "$OUT/bench-trt-$precision.json"
    done
else
    say "TensorRT steps skipped: ${TRT#no: }"
fi

# ---------------------------------------------------------------- summary
"$PYTHON" - "$STEPS" "$OUT/summary.json" "$TRT" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from deploy.core.environment import versions
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
steps = [{"step": n, "exit_code": int(rc), "seconds": int(s)} for n, rc, s in rows]
import torch
doc = {"format": "convdeploy-gpu-check/1", "gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
       "tensorrt": sys.argv[3], "versions": versions(), "steps": steps,
       "passed": all(s["exit_code"] in (0, 6) if s["step"].startswith("claims") else s["exit_code"] == 0 for s in steps)}
json.dump(doc, open(sys.argv[2], "w"), indent=2)
for s in steps:
    print(f"  {s['step']:<45} exit {s['exit_code']:>3}  {s['seconds']:>4} s")
print("PASSED" if doc["passed"] else "FAILED", "-", sys.argv[2])
sys.exit(0 if doc["passed"] else 1)
EOF
rc=${PIPESTATUS[0]}
rm -f "$STEPS"
say "log: $LOG; results: $OUT"
exit "$rc"
