"""Serving: Triton Inference Server model repositories for checked artifacts, and a local server."""
