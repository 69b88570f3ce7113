"""What the proof costs beside the export: `deploy export --fold` step by step against a bare
dynamo export + onnxsim of the same folded module, each in a process of its own, interleaved.

Models: ResNet-50 at 224x224, SPConv-ResNet-50 at 224x224 (seeded random weights, `deploy zoo
create`) and a ResNet-20 trained for one epoch on the bundled digits (`deploy zoo train`, 32x32:
its export also scores the held-out digits). Each round runs, per model and in alternating order
(A B, B A, ...):

- `deploy export CKPT --fold -o OUT --json` in a fresh process: the step times its report holds and
  the wall time of the whole process;
- the bare export in a fresh process: the same checkpoint loaded and folded by convdeploy (not
  timed), then ``torch.onnx.export(dynamo=True)`` with a dynamic batch, ``onnxsim.simplify`` and
  ``onnx.save`` timed, and the process's wall time less the untimed loading and folding;
- with ``--before DIR``, `deploy export` of another source tree (e.g. ``git archive main``) too.

With ``--busy`` every round is run twice, once quiet and once with one CPU-bound process (a
Python busy loop) beside it, the two interleaved. The table gives the median per step, the ratio
of `deploy export`'s steps to the bare export + simplify + save (and of the process walls), and
the busy/quiet ratio. The load average is printed with every run: the numbers mean something
only beside it. Never asserts a time.

    .venv/bin/python benchmarks/export_cost.py                       # 3 rounds, quiet only
    git archive main | tar -x -C /tmp/main-src
    .venv/bin/python benchmarks/export_cost.py --before /tmp/main-src --busy --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = "from deploy.cli import main; main()"


@dataclass(frozen=True)
class Model:
    key: str
    create: tuple[str, ...]  # the `deploy zoo` arguments that make its checkpoint


MODELS = (
    Model("resnet50", ("create", "resnet50", "--input-size", "224")),
    Model("spconv-resnet50", ("create", "resnet50", "--conv", "sp", "--input-size", "224")),
    Model("digits-resnet20", ("train", "resnet20", "--epochs", "1")),
)


@dataclass
class Runs:
    """Every timed run of one (model, mode, variant): its steps and the process wall, in seconds."""

    steps: list[dict[str, float]] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)

    def median(self, step: str) -> float:
        return statistics.median(s.get(step, 0.0) for s in self.steps)

    def total(self) -> float:
        return statistics.median(sum(s.values()) for s in self.steps)

    def wall(self) -> float:
        return statistics.median(self.walls)


def _env(source: Path) -> dict[str, str]:
    """The environment of a child process that imports convdeploy from ``source`` (run it from a
    directory without a ``deploy`` package: ``-c`` puts the working directory first)."""
    return {**os.environ, "PYTHONPATH": str(source), "PYTHONDONTWRITEBYTECODE": "1"}


def checkpoint(model: Model, workdir: Path) -> Path:
    path = workdir / f"{model.key}.pt"
    if not path.exists():
        subprocess.run([sys.executable, "-c", DEPLOY, "zoo", *model.create, "-o", str(path)], check=True,
                       env=_env(ROOT), stdout=subprocess.DEVNULL, cwd=workdir)
    return path


def run_deploy(ckpt: Path, out: Path, source: Path) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DEPLOY, "-q", "export", str(ckpt), "--fold", "-o", str(out), "--json"],
                          env=_env(source), capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"deploy export {ckpt} ({source}) failed: {done.stderr.strip()[-2000:]}")
    record = json.loads(done.stdout)
    steps = dict(record["seconds"])
    for part, seconds in _parity_split(record).items():
        steps[f"  {part}"] = seconds
    return steps, wall


def _parity_split(record: dict) -> dict[str, float]:
    """The parity step's split where the report has it (not part of the steps' total)."""
    split = record.get("parity_seconds")
    if not split:
        return {}
    return {"parity: reference": split["reference"], "parity: candidates": sum(split["candidates"].values()),
            "parity: comparison": split["comparison"]}


def run_bare(ckpt: Path, out: Path) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--bare", str(ckpt), str(out)], env=_env(ROOT),
                          capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bare export of {ckpt} failed: {done.stderr.strip()[-2000:]}")
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: v for k, v in times.items() if k != "prep"}, wall - times["prep"]


def bare_export(ckpt: Path, out: Path) -> None:
    """The child process of ``run_bare``: prepare the folded module (untimed), then time the bare export."""
    start = time.perf_counter()
    import onnx  # noqa: PLC0415 - the child process's own imports
    import onnxsim  # noqa: PLC0415
    import torch  # noqa: PLC0415

    sys.path.insert(0, str(ROOT))
    from deploy.load.source import ModelSource  # noqa: PLC0415
    from deploy.pipeline.steps import fold_step, load_step  # noqa: PLC0415

    loaded, shape = load_step(ModelSource(ckpt))
    folded, _ = fold_step(loaded, shape, 0)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    times = {"prep": time.perf_counter() - start}
    t = time.perf_counter()
    program = torch.onnx.export(folded, (x,), None, dynamo=True, opset_version=18, input_names=["input"],
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    assert program is not None
    proto = program.model_proto
    times["export"] = time.perf_counter() - t
    t = time.perf_counter()
    proto, _ok = onnxsim.simplify(proto)
    times["simplify"] = time.perf_counter() - t
    t = time.perf_counter()
    onnx.save(proto, str(out))
    times["save"] = time.perf_counter() - t
    print(json.dumps(times))


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _table(key: str, runs: dict[tuple[str, str], Runs], modes: list[str], variants: list[str]) -> None:
    print(f"\n{key}")
    for mode in modes:
        bare = runs[(mode, "bare")]
        base = bare.total()
        names = [v for v in variants if v != "bare"]
        print(f"  [{mode}] " + " | ".join(f"{n:>16s}" for n in ["step", *names, "bare"]))
        steps: list[str] = []
        for v in names:
            steps += [s for s in runs[(mode, v)].steps[0] if s not in steps]
        for step in steps:
            cells = [f"{runs[(mode, v)].median(step):14.2f} s" if step in runs[(mode, v)].steps[0] else " " * 16
                     for v in names]
            bare_cell = f"{bare.median(step):14.2f} s" if step in bare.steps[0] else " " * 16
            print(f"  {'':{len(mode) + 2}s} {step:>16s} | " + " | ".join(cells) + f" | {bare_cell}")
        for v in names:
            totals = [sum(x for k, x in s.items() if not k.startswith("  ")) for s in runs[(mode, v)].steps]
            total = statistics.median(totals)
            print(f"  {v}: steps {total:.2f} s vs bare export+simplify+save {base:.2f} s = {total / base:.2f}x; "
                  f"process {runs[(mode, v)].wall():.2f} s vs {bare.wall():.2f} s = {runs[(mode, v)].wall() / bare.wall():.2f}x")
    if len(modes) == 2:
        for v in variants:
            quiet, busy = runs[("quiet", v)].wall(), runs[("busy", v)].wall()
            print(f"  {v}: busy/quiet process wall {busy:.2f} / {quiet:.2f} s = {busy / quiet:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=",".join(m.key for m in MODELS))
    parser.add_argument("--before", type=Path, default=None, help="another source tree to time `deploy export` of")
    parser.add_argument("--busy", action="store_true", help="also run beside one CPU-bound process")
    parser.add_argument("--workdir", type=Path, default=None, help="where the checkpoints are kept (default: a temp dir)")
    parser.add_argument("--bare", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_export(*args.bare)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="export-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    models = [m for m in MODELS if m.key in args.models.split(",")]
    variants = (["before"] if args.before else []) + ["after", "bare"]
    modes = ["quiet", "busy"] if args.busy else ["quiet"]
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()}; checkpoints in {workdir}")
    ckpts = {m.key: checkpoint(m, workdir) for m in models}
    runs = {(m.key, mode, v): Runs() for m in models for mode in modes for v in variants}
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            neighbour = _busy() if mode == "busy" else None
            try:
                for m in models:
                    order = variants if r % 2 == 0 else variants[::-1]
                    for v in order:
                        out = workdir / f"{m.key}.{v}.onnx"
                        steps, wall = (run_bare(ckpts[m.key], out) if v == "bare" else
                                       run_deploy(ckpts[m.key], out, args.before if v == "before" else ROOT))
                        runs[(m.key, mode, v)].steps.append(steps)
                        runs[(m.key, mode, v)].walls.append(wall)
                        shown = json.dumps({k.strip(): round(x, 2) for k, x in steps.items()})
                        print(f"round {r + 1} {mode:5s} {m.key:16s} {v:6s} process {wall:6.2f} s "
                              f"(load {os.getloadavg()[0]:.1f}) {shown}", flush=True)
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
    for m in models:
        _table(m.key, {(mode, v): runs[(m.key, mode, v)] for mode in modes for v in variants}, modes, variants)


if __name__ == "__main__":
    main()
