"""How long `deploy` takes to start: each command once per round, against `polygraphy inspect model`.

Times, as wall clock of a fresh process (``subprocess.run``), ``deploy --version``,
``deploy --help``, ``deploy inspect r50.onnx``, ``deploy bench r50.onnx --iters 1`` and
``polygraphy inspect model r50.onnx``, interleaved: every round runs each command once, in an
order rotated from round to round, so that load on a shared machine reaches all of them alike.
It prints the median, the spread (min and max) and each median as a ratio of polygraphy's; the
target is ``deploy inspect`` within 1.5x of ``polygraphy inspect model``. Never asserts a time.

``r50.onnx`` is ResNet-50 (seeded random weights) made once with the export pipeline
(`deploy zoo create resnet50`, `deploy export`) in ``--work`` and reused; ``--onnx`` takes
another model instead.

    .venv/bin/python benchmarks/startup.py               # 7 rounds
    .venv/bin/python benchmarks/startup.py --rounds 15   # steadier medians on a loaded machine
    .venv/bin/python benchmarks/startup.py --baseline OTHER/.venv/bin/deploy   # before/after in one run

``--baseline`` times the same four deploy commands of another installation (an older checkout)
in the same interleaved rounds, labelled ``before:``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEPLOY = str(BIN / "deploy")
POLYGRAPHY = str(BIN / "polygraphy")
TARGET = 1.5  # deploy inspect / polygraphy inspect model


def make_onnx(work: Path) -> Path:
    """ResNet-50's ONNX through the export pipeline, made once in ``work``."""
    onnx_path = work / "r50.onnx"
    if onnx_path.is_file():
        return onnx_path
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "r50.pt"
    print(f"making {onnx_path} with the export pipeline (a minute or two) …", flush=True)
    subprocess.run([DEPLOY, "-q", "zoo", "create", "resnet50", "-o", str(ckpt)], check=True)
    subprocess.run([DEPLOY, "-q", "export", str(ckpt), "-o", str(onnx_path), "--samples", "1", "--no-rewrite-diff"],
                   check=True)
    return onnx_path


def deploy_commands(deploy: str, model: str, tag: str = "") -> dict[str, list[str]]:
    """The four deploy commands timed, for the ``deploy`` executable given."""
    return {
        f"{tag}deploy --version": [deploy, "--version"],
        f"{tag}deploy --help": [deploy, "--help"],
        f"{tag}deploy inspect r50.onnx": [deploy, "inspect", model],
        f"{tag}deploy bench r50.onnx --iters 1": [deploy, "bench", model, "--iters", "1"],
    }


def commands(onnx_path: Path, baseline: str | None = None) -> dict[str, list[str]]:
    """Label -> argv of every command timed; polygraphy last (the ratios' base)."""
    model = str(onnx_path)
    cmds = deploy_commands(DEPLOY, model)
    if baseline is not None:
        cmds.update(deploy_commands(baseline, model, "before: "))
    cmds["polygraphy inspect model r50.onnx"] = [POLYGRAPHY, "inspect", "model", model]
    return cmds


def time_once(argv: list[str]) -> float:
    """Seconds from start to exit of one process (its output discarded); a failure stops the benchmark."""
    start = time.perf_counter()
    run = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {run.returncode}: {run.stderr.strip()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="Runs of each command (interleaved).")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "startup", help="Where r50.onnx is made.")
    parser.add_argument("--onnx", type=Path, default=None, help="Time this model instead of ResNet-50.")
    parser.add_argument("--baseline", default=None, help="Another installation's deploy executable, timed too.")
    args = parser.parse_args()
    onnx_path = args.onnx or make_onnx(args.work)
    cmds = commands(onnx_path, args.baseline)
    labels = list(cmds)
    for argv in cmds.values():  # once each untimed: the file cache and .pyc files are warm for every command
        time_once(argv)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(args.rounds):
        order = labels[r % len(labels):] + labels[: r % len(labels)]
        for label in order:
            times[label].append(time_once(cmds[label]))
    base = statistics.median(times[labels[-1]])
    print(f"start-up times, {args.rounds} interleaved rounds, {onnx_path} "
          f"({onnx_path.stat().st_size / 2**20:.1f} MiB)")
    print(f"{'command':<44} {'median s':>9} {'min s':>7} {'max s':>7} {'/ polygraphy':>13}")
    for label in labels:
        t = times[label]
        print(f"{label:<44} {statistics.median(t):9.3f} {min(t):7.3f} {max(t):7.3f} "
              f"{statistics.median(t) / base:12.2f}x")
    ratio = statistics.median(times["deploy inspect r50.onnx"]) / base
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"target: deploy inspect within {TARGET}x of polygraphy inspect model: {verdict} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
