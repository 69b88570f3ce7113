"""`deploy bench MODEL.onnx --profile`: ONNX Runtime's per-op profile as tables and a JSON file.

The work is ``validators.profile.profile_onnx``; this module prints the top-N op types and
nodes (with ``--vs``, both models side by side, each op's time as a share of B's run) and
writes the JSON atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from rich.table import Table

from deploy.commands.common import MachineOutput, console, machine_output
from deploy.core.environment import host_device
from deploy.core.errors import BadInputError
from deploy.core.pathguard import guard_paths
from validators.profile import OnnxProfile, profile_models

PROFILE_FORMAT = "convdeploy-profile/1"


def default_profile_path(model: Path) -> Path:
    """``model.onnx`` -> ``model.profile.json``."""
    return model.with_name(model.name[: -len(".onnx")] + ".profile.json" if model.name.endswith(".onnx")
                           else model.name + ".profile.json")


def op_table(profiles: list[tuple[str, OnnxProfile]], top: int) -> Table:
    """Op types by time per run; with two models, A and B side by side and A − B as a share of
    B's kernel time (what A spends beyond B, op by op)."""
    base = profiles[-1][1]
    title = "time per run by op type" + ("" if len(profiles) == 1 else " — " + ", ".join(n for n, _ in profiles))
    table = Table(title=title, header_style="bold")
    table.add_column("op")
    tags = ["ms"] if len(profiles) == 1 else ["A ms", "B ms"]
    for tag in tags:
        table.add_column(tag, justify="right")
    table.add_column("share" if len(profiles) == 1 else "A−B, % of B", justify="right")
    table.add_column("calls" if len(profiles) == 1 else "calls A/B", justify="right")
    ops: dict[str, float] = {}
    for _, prof in profiles:
        for o in prof.by_op:
            ops[o.op] = max(ops.get(o.op, 0.0), o.ms)
    for op in sorted(ops, key=lambda k: -ops[k])[:top]:
        rows = [next((o for o in prof.by_op if o.op == op), None) for _, prof in profiles]
        ms = [r.ms if r else 0.0 for r in rows]
        share = ms[0] if len(ms) == 1 else ms[0] - ms[1]
        calls = "/".join(f"{r.calls:g}" if r else "0" for r in rows)
        table.add_row(op, *[f"{m:.3f}" for m in ms], f"{100 * share / base.kernel_ms:+.1f} %".lstrip("+"), calls)
    totals = [p.kernel_ms for _, p in profiles]
    share = totals[0] if len(totals) == 1 else totals[0] - totals[1]
    table.add_row("[bold]all kernels[/]", *[f"{t:.3f}" for t in totals],
                  f"{100 * share / base.kernel_ms:+.1f} %".lstrip("+"), "")
    return table


def node_table(name: str, prof: OnnxProfile, top: int) -> Table:
    """The ``top`` slowest nodes of one model."""
    table = Table(title=f"{name}: the {top} slowest nodes (ms per run)", header_style="bold")
    for col in ("node", "op", "ms", "share"):
        table.add_column(col, justify="left" if col in ("node", "op") else "right")
    for n in prof.by_node[:top]:
        table.add_row(n.name, n.op, f"{n.ms:.3f}", f"{100 * n.share:.1f} %")
    return table


def profile_command(paths: list[Path], shapes: list[tuple[int, ...]], *, threads: Optional[int],
                    provider: Optional[str], iters: Optional[int], warmup_runs: int, seed: int, top: int,
                    as_json: bool, json_file: Optional[Path]) -> None:
    """Profile each ONNX model of ``paths`` on one seeded input, print the tables and emit the record: to
    ``json_file`` (default MODEL.profile.json, unless ``as_json`` prints it on stdout only)."""
    if provider not in (None, "cpu"):
        raise BadInputError("--profile uses ONNX Runtime's CPU profiler: drop --provider")
    if top < 1:
        raise BadInputError(f"--top {top} must be >= 1")
    target = json_file if json_file is not None or as_json else default_profile_path(paths[0])
    guard_paths(inputs={"the profiled model": paths[0], "the second model": paths[1] if len(paths) > 1 else None},
                outputs={"`json_file`": target})
    with machine_output(as_json, target) as out:
        _profile(paths, shapes, out, threads=threads, iters=iters, warmup_runs=warmup_runs, seed=seed, top=top)


def _profile(paths: list[Path], shapes: list[tuple[int, ...]], out: MachineOutput, *, threads: Optional[int],
             iters: Optional[int], warmup_runs: int, seed: int, top: int) -> None:
    x = np.random.default_rng(seed).standard_normal(shapes[0]).astype(np.float32)
    with console.status(f"profiling {' and '.join(p.name for p in paths)} …"):
        found = profile_models(paths, x, threads=threads, runs=iters or 20, warmup=warmup_runs)
    names = [p.name if len(paths) == 1 else f"{tag}: {p.name}" for tag, p in zip("AB", paths)]
    profiles = list(zip(names, found))
    console.print(op_table(profiles, top))
    for name, prof in profiles:
        console.print(node_table(name, prof, top))
    record: dict[str, Any] = {"format": PROFILE_FORMAT, "seed": seed, "device": host_device(),
                              "profiles": [{"artifact": str(p), **prof.to_dict()} for p, (_, prof) in zip(paths, profiles)]}
    out.emit(record)
