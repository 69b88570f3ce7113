# Two entry points for a fresh machine: `make demo` and `make test` (README).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEPLOY := $(VENV)/bin/deploy
STAMP  := $(VENV)/.installed-stamp
OUT    := out
# The Triton environment of the serving tests: nvidia-pytriton's tritonserver, tritonclient and ONNX
# Runtime pin numpy<2 and protobuf<7, so they live beside the main venv (docs/serving.md).
TRITON_VENV  := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-stamp

.PHONY: install triton-env demo test test-fast test-models lint ci ci-gpu docker-test clean

install: $(STAMP)

triton-env: $(TRITON_STAMP)

$(TRITON_STAMP): Makefile
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet 'nvidia-pytriton>=0.7,<0.8' 'tritonclient[grpc,http]>=2.50' onnxruntime 'numpy<2'
	touch $(TRITON_STAMP)

# torch is pinned and installed first so that pip takes the CPU wheel lying on the machine.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The real-model sweep's own environment: the CUDA build of torch (about 3 GB with its nvidia-*
# wheels; it runs on CPU-only machines too), torchvision and timm beside the project.
MODELS_VENV  := .venv-models
MODELS_STAMP := $(MODELS_VENV)/.installed-stamp

$(MODELS_STAMP): pyproject.toml
	$(PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MODELS_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 timm
	$(MODELS_VENV)/bin/python -m pip install --quiet -e .
	touch $(MODELS_STAMP)

# Not part of `make test`: exports every model of benchmarks/models_sweep.py, compares each with
# ONNX Runtime and rewrites docs/models.md; exits non-zero on any failure.
test-models: $(MODELS_STAMP)
	$(MODELS_VENV)/bin/python benchmarks/models_sweep.py --table docs/models.md

demo: $(STAMP)
	@mkdir -p $(OUT)
	$(DEPLOY) zoo train resnet20 --conv doconv --data digits --epochs 5 -o $(OUT)/model.pt
	$(DEPLOY) export $(OUT)/model.pt --fold -o $(OUT)/model.onnx

# The inner loop (CONTRIBUTING.md): the suite without the end-to-end and full-size tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not e2e and not slow"

lint: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/ruff check deploy exporters validators tests benchmarks
	$(VENV)/bin/mypy

test: $(STAMP) $(TRITON_STAMP) lint
	$(PY) -m pytest -q -n 2

# The parity suite the Docker images run (no $(STAMP): the image installs its own venv).
ci:
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/ruff check deploy exporters validators tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -n 2
	@mkdir -p $(OUT)
	$(DEPLOY) claims --quick --threads 1 -o $(OUT)/claims

ci-gpu:
	$(PY) -m pytest -q -m gpu
	@mkdir -p $(OUT)
	$(DEPLOY) claims --quick --backend trt -o $(OUT)/claims

docker-test:
	bash scripts/docker-test.sh

clean:
	rm -rf $(OUT) .pytest_cache .hypothesis
