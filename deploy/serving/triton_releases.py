"""Which Triton container releases carry the TensorRT version an engine was built with.

A serialized engine runs only on the TensorRT version that built it, so an engine served by Triton
needs the container release with that version. The table is the "Release Compatibility Matrix" of
Triton's own documentation (``docs/introduction/compatibility.md`` of triton-inference-server/server,
the ``trtllm-python-py3`` containers: the only table there that names the TensorRT version), rows
with TensorRT 10 and later. Versions are as printed there: a row of ``10.7.0`` matches every
``10.7.0.x`` build. Triton's docs also say a Triton release YY.MM ships the TensorRT of the NGC
TensorRT container YY.MM; check the ``-py3`` container's own TensorRT before serving (docs/serving.md).
"""

from __future__ import annotations

#: (TensorRT version as the matrix prints it, Triton container releases that carry it)
TRITON_TENSORRT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("10.14.1.48", ("26.03", "26.04", "26.05", "26.06", "26.07")),
    ("10.13.3.9", ("25.11", "25.12", "26.01", "26.02")),
    ("10.11.0.33", ("25.08", "25.09", "25.10")),
    ("10.10.0.31", ("25.06", "25.07")),
    ("10.9.0.34", ("25.03", "25.04", "25.05")),
    ("10.8.0.43", ("25.01", "25.02")),
    ("10.7.0", ("24.12",)),
    ("10.6.0", ("24.11",)),
    ("10.4.0", ("24.09", "24.10")),
    ("10.3.0", ("24.08",)),
    ("10.1.0", ("24.07",)),
    ("10.0.1", ("24.06",)),
    ("10.0.1.6", ("24.05",)),
)
SOURCE = "Triton's release compatibility matrix (trtllm-python-py3 containers)"


def _matches(row: str, version: str) -> bool:
    return version == row or version.startswith(row + ".")


def triton_releases(tensorrt_version: str) -> tuple[str, ...]:
    """The Triton container releases listed with ``tensorrt_version``, oldest first; () when none is known."""
    found = {r for row, releases in TRITON_TENSORRT if _matches(row, str(tensorrt_version)) for r in releases}
    return tuple(sorted(found))


def container_hint(tensorrt_version: str) -> str:
    """One line naming the container to serve an engine of ``tensorrt_version`` in."""
    releases = triton_releases(tensorrt_version)
    if not releases:
        return (f"no Triton release with TensorRT {tensorrt_version} is in convdeploy's table ({SOURCE}): find the "
                "release whose TensorRT matches in Triton's release notes, or rebuild the engine inside the container")
    return (f"TensorRT {tensorrt_version} ships in Triton {', '.join(releases)} ({SOURCE}): confirm the image's "
            "TensorRT (`dpkg -l | grep nvinfer` in it) before serving the engine")
