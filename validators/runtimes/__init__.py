"""Runtimes behind one interface (``validators.runtimes.base.Runtime``): ONNX Runtime, PyTorch and
TensorRT, each ``run_all(x) -> {output name: array}``."""
