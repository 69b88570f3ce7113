"""TensorRT timing caches that never break a build: a record beside each cache, checked before use.

A timing cache (``--timing-cache tc.bin``) holds tactic timings of one TensorRT version on
one GPU. TensorRT refuses a cache from another device or version when it is attached to a
builder config (and a truncated file may not load at all); a build that then asks for the
cache crashes before the engine is written. So convdeploy writes ``tc.bin.json`` beside
every cache it saves (TensorRT version, GPU, compute capability) and, before a build,
decides here — plain Python, no TensorRT — whether the bytes are worth offering:

- no file yet: build with an empty cache and save it afterwards;
- a record naming another TensorRT version or GPU, or an empty file: ignore the file, say so
  in one line, and replace it with this build's cache;
- no record (a cache from elsewhere): offer it; TensorRT verifies its header, and a refusal
  is again one line and a fresh cache (``exporters.tensorrt.build`` handles that on the GPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.core.atomic import write_bytes_atomic, write_json_atomic

CACHE_FORMAT = "convdeploy-timing-cache/1"
CACHE_KEYS = ("tensorrt_version", "gpu_name", "compute_capability")


@dataclass(frozen=True)
class TimingCachePlan:
    """What a build does with ``path``: the bytes to offer TensorRT (b"" for none) and why, in one line."""

    path: Path | None
    data: bytes = b""
    note: str | None = None

    @property
    def saves(self) -> bool:
        return self.path is not None


def record_path(cache: Path) -> Path:
    """``tc.bin`` -> ``tc.bin.json``."""
    return cache.with_name(cache.name + ".json")


def _read_record(cache: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(record_path(cache).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None


def plan_timing_cache(cache: Path | None, env: dict[str, Any]) -> TimingCachePlan:
    """Decide, from the file and its record, what to offer the builder (never raises on a bad cache)."""
    if cache is None:
        return TimingCachePlan(None)
    if not cache.is_file():
        return TimingCachePlan(cache)
    try:
        data = cache.read_bytes()
    except OSError as exc:
        return TimingCachePlan(cache, note=f"timing cache {cache} is unreadable ({exc.strerror or exc}): "
                                          "ignored; this build writes a fresh one")
    if not data:
        return TimingCachePlan(cache, note=f"timing cache {cache} is empty: ignored; this build writes a fresh one")
    record = _read_record(cache)
    if record is None:
        return TimingCachePlan(cache, data)
    built = tuple(str(record.get(k)) for k in CACHE_KEYS)
    here = tuple(str(env.get(k)) for k in CACHE_KEYS)
    if built != here:
        return TimingCachePlan(cache, note=(
            f"timing cache {cache} was made with TensorRT {built[0]} on {built[1]} ({built[2]}), this is TensorRT "
            f"{here[0]} on {here[1]} ({here[2]}): ignored; this build replaces it"))
    return TimingCachePlan(cache, data)


def refused_note(cache: Path | None) -> str:
    """The line printed when TensorRT itself refuses the offered bytes."""
    return (f"timing cache {cache} does not match this TensorRT version or GPU (TensorRT refused it): "
            "ignored; this build replaces it")


def save_timing_cache(cache: Path, data: bytes, env: dict[str, Any]) -> None:
    """Write the cache and its record (each atomically; the record last, so it never vouches for old bytes)."""
    record_path(cache).unlink(missing_ok=True)
    write_bytes_atomic(cache, data)
    write_json_atomic(record_path(cache), {"format": CACHE_FORMAT, **{k: env.get(k) for k in CACHE_KEYS}})
