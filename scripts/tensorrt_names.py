#!/usr/bin/env python3
"""Write tests/data/tensorrt_names.json.gz: the names TensorRT's Python bindings register, per release.

    python scripts/tensorrt_names.py [--out tests/data/tensorrt_names.json.gz] [VERSION ...]

For each release (default: 10.13.3.9 and 11.4.0.106) it downloads the real
``tensorrt-cu12-bindings`` wheel from PyPI (``pip download --no-deps``), unpacks it and
imports its ``tensorrt_bindings`` package in a child process, then records ``dir()`` of
the module and of every class it registers (and of the classes nested in those, such as
``ILogger.Severity``): public names, ``__version__`` and the few protocol methods a caller
may rely on (``__enter__``, ``__len__``, ...). The bindings' ``tensorrt.so`` needs TensorRT's libraries
(libnvinfer, libnvonnxparser, libnvinfer_plugin), which are not on PyPI: the script
compiles a placeholder library for each with ``cc`` that exports the handful of factory
functions the bindings link against (they are only called when a Builder or Runtime is
created, which the child never does). Registering the classes, methods and enum members
is pybind11 code inside ``tensorrt.so`` itself, so every name recorded is the real one.

tests/tensorrt/test_tensorrt_api.py reads the file (committed; no network at test time) and checks
every TensorRT name the project uses against the releases it is used with. Needs network
to PyPI, ``cc`` and ``nm``, and a Python for which the wheels exist (3.8-3.13).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_VERSIONS = ("10.13.3.9", "11.4.0.106")
PACKAGE = "tensorrt-cu12-bindings"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "tensorrt_names.json.gz"

#: run in the child, with the unpacked wheel on sys.path and the placeholder libraries on LD_LIBRARY_PATH
WALK = r"""
import json, sys
import tensorrt_bindings as trt

def public(obj):
    dunder = {"__version__", "__init__", "__enter__", "__exit__", "__iter__", "__len__", "__getitem__"}
    return sorted(n for n in dir(obj) if (not (n.startswith("__") and n.endswith("__")) or n in dunder)
                  and n != "_pybind11_conduit_v1_")

names = {"": public(trt)}
for name in names[""]:
    obj = getattr(trt, name)
    if isinstance(obj, type):
        names[name] = public(obj)
        for inner in names[name]:
            sub = getattr(obj, inner, None)
            if isinstance(sub, type) and sub.__module__ == obj.__module__ and sub is not obj:
                names[f"{name}.{inner}"] = public(sub)
json.dump({"version": trt.__version__, "names": names}, sys.stdout)
"""


def download(version: str, dest: Path) -> Path:
    """The bindings wheel of ``version`` for this Python on manylinux x86_64."""
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--platform", "manylinux_2_28_x86_64", "--python-version", py, "--implementation", "cp",
                    "-d", str(dest), f"{PACKAGE}=={version}"], check=True)
    (wheel,) = dest.glob(f"{PACKAGE.replace('-', '_')}-{version}-*.whl")
    return wheel


def _provided_here(symbol: str) -> bool:
    """Whether libc, libm, libstdc++, libgcc_s or this Python already export ``symbol``."""
    libs = [None] + [ctypes.util.find_library(n) for n in ("c", "m", "stdc++", "gcc_s", "dl")]
    for lib in libs:
        try:
            handle = ctypes.CDLL(lib)
            getattr(handle, symbol)
            return True
        except (OSError, AttributeError):
            continue
    return False


def placeholder_libraries(so: Path, out_dir: Path) -> list[str]:
    """Compile one placeholder for each TensorRT library ``so`` needs; return the symbols it exports."""
    needed = subprocess.run(["readelf", "-d", str(so)], check=True, capture_output=True, text=True).stdout
    libraries = [line.split("[", 1)[1].rstrip("]") for line in needed.splitlines() if "(NEEDED)" in line]
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(so)], check=True, capture_output=True,
                               text=True).stdout
    symbols = sorted({line.split()[-1] for line in undefined.splitlines()
                      if line.split()[0] == "U" and "@" not in line.split()[-1]
                      and not line.split()[-1].startswith(("Py", "_Py")) and not _provided_here(line.split()[-1])})
    source = out_dir / "placeholder.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
    for lib in libraries:
        if lib.startswith("libnv"):
            subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out_dir / lib), str(source)], check=True)
    return symbols


def registered_names(wheel: Path, work: Path) -> dict:
    """Import the wheel's bindings in a child process and return {"version", "names"}."""
    unpacked = work / wheel.stem
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    libs = work / f"{wheel.stem}-libs"
    libs.mkdir()
    placeholder_libraries(unpacked / "tensorrt_bindings" / "tensorrt.so", libs)
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs), PYTHONPATH=str(unpacked))
    child = subprocess.run([sys.executable, "-c", WALK], check=True, capture_output=True, text=True, env=env)
    return json.loads(child.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", default=list(DEFAULT_VERSIONS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    doc: dict = {"format": "convdeploy-tensorrt-names/1", "package": PACKAGE,
                 "how": "dir() of the module and of each registered class, see scripts/tensorrt_names.py",
                 "releases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for version in args.versions:
            work = Path(tmp) / version
            work.mkdir()
            wheel = download(version, work)
            found = registered_names(wheel, work)
            if found["version"] != version:
                raise SystemExit(f"{wheel.name} reports TensorRT {found['version']}, expected {version}")
            doc["releases"][version] = {"wheel": wheel.name,
                                        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                                        "names": found["names"]}
            count = sum(len(v) for v in found["names"].values())
            print(f"{version}: {len(found['names'])} scopes, {count} names ({wheel.name})")
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    with open(tmp_out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(payload)
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
