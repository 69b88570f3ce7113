"""`deploy claims`: check the papers' efficiency claims on this machine, with verdicts.

The work is ``deploy.claims.run.run_claims`` (a plain function); this module parses options,
shows progress (what is running, and the ETA) and prints the verdict table. Exit code 6
when any claim is refuted (after every report file is written), 0 otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from deploy.claims.matrix import model_choices, select_entries
from deploy.claims.run import ClaimsRun, run_claims
from deploy.claims.settings import ClaimsSettings
from deploy.commands.common import console, finite, machine_output, warn
from deploy.commands.options import JSON
from deploy.commands.printing import RichProgress
from deploy.core.errors import BadInputError, ClaimRefutedError
from deploy.core.shapes import parse_input_size
from validators.claims import MACHINE, RatioMeasure
from validators.sequential import MARGIN

_STYLE = {"confirmed": "green", "refuted": "bold red", "inconclusive": "yellow", "reported": "cyan"}


def _batches(values: Optional[list[str]]) -> Optional[tuple[int, ...]]:
    if not values:
        return None
    out = []
    for item in values:
        for part in item.replace(" ", ",").split(","):
            if part:
                try:
                    out.append(int(part))
                except ValueError:
                    raise BadInputError(f"--batches {item!r}: give integers, e.g. --batches 1,64") from None
    return tuple(out)


def _cell(m: Optional[RatioMeasure]) -> str:
    if m is None:
        return "-"
    noise = m.noise
    aa = f"\nA/A {noise.text()}" if noise is not None else ""
    return f"{m.text()}{aa}\n{m.pairs} pairs"


def _summary(run: ClaimsRun) -> Table:
    shape = "x".join(map(str, run.input_shape))
    table = Table(title=f"deploy claims — {run.date}, {run.backend_text}, input {shape}", show_lines=True)
    table.add_column("#", no_wrap=True, min_width=1)
    table.add_column("model", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for b in run.batches:
        table.add_column(f"ratio b={b} [95 % CI]", no_wrap=True)
    for c in run.claims:
        style = _STYLE.get(c.verdict, "")
        table.add_row(c.claim, c.subject, f"[{style}]{c.verdict}[/]", *(_cell(run.measure(c.subject, b))
                                                                      for b in run.batches))
    return table


def claims(
    output_dir: Path = typer.Option(Path("claims"), "-o", "--output", help="Directory for claims.json/.md/.png, "
                                    "the checkpoints and the ONNX exports (created if missing)."),
    backend: str = typer.Option("auto", "--backend", help="auto (TensorRT when present, else ONNX Runtime CPU), ort, trt, "
                                "or torch (PyTorch eager on the checkpoints; --device cuda on a GPU: the papers' setting)."),
    device: str = typer.Option("cpu", "--device", help="Backend torch: cpu or cuda (exit 5 without a CUDA GPU)."),
    batches: Optional[list[str]] = typer.Option(None, "--batches", help="Batch sizes, repeatable or "
                                                "comma-separated (default 1,64; --quick: 1,8)."),
    batch: Optional[list[str]] = typer.Option(None, "--batch", hidden=True,
                                              help="Deprecated spelling of --batches."),
    quick: bool = typer.Option(False, "--quick", help="The same matrix at 64x64 with short timing budgets (CI)."),
    models: Optional[list[str]] = typer.Option(None, "--models", help="Subset, comma-separated, of: "
                                               f"{', '.join(model_choices())} (a kind's name selects all its "
                                               "models). The ResNet-50 baseline always runs."),
    input_size: Optional[str] = typer.Option(None, "--input-size", metavar="H|HxW",
                                             help="Input height and width, e.g. 224 or 224x160 (default: each "
                                                  "model's, 224; --quick 64)."),
    warmup: Optional[str] = typer.Option(None, "--warmup", help="Warm-up per comparison: runs (10) or seconds (2s)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="At most this many A/B pairs per comparison."),
    duration: Optional[float] = typer.Option(None, "--duration", callback=finite,
                                  help="Seconds per A/B comparison (default 15 at "
                                             "batch 1 and 60 above; --quick 2 and 3)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads (default: runtime's)."),
    exporter: Optional[str] = typer.Option(None, "--exporter", help="dynamo (default) or torchscript "
                                           "(default with --quick: faster)."),
    margin: float = typer.Option(MARGIN, "--margin", callback=finite,
                                 help="Widen the A/A interval by this ratio on each side (0.01: 1 %) to make the "
                                      "noise band every ratio is judged beside."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights, parity inputs, timing input and bootstrap."),
    as_json: bool = JSON,
) -> None:
    """Verify the papers' efficiency claims on this machine: verdicts in DIR/claims.md (exit 6 if any is refuted)."""
    if batch:
        warn("--batch is deprecated for deploy claims (it takes several sizes): use --batches")
    settings = ClaimsSettings(output_dir=output_dir, backend=backend, device=device,
                              batches=_batches((batches or []) + (batch or [])), quick=quick,
                              input_size=parse_input_size(input_size), warmup=warmup, iters=iters, duration=duration,
                              threads=threads, seed=seed, exporter=exporter, margin=margin)
    entries = select_entries(models)
    settings.check()
    with machine_output(as_json, None) as machine:  # DIR/claims.json is always written; --json also prints it
        with RichProgress() as progress:
            run = run_claims(settings, entries, progress)
        machine.emit(run.to_dict())
        _print_claims(run)
    refuted = [c for c in run.claims if c.verdict == "refuted"]
    if refuted:
        names = ", ".join(f"claim {c.claim} ({c.subject})" for c in refuted)
        raise ClaimRefutedError(f"{len(refuted)} claim(s) refuted: {names}; the reasons are in "
                                f"{Path(output_dir) / 'claims.md'}")


def _print_claims(run: ClaimsRun) -> None:
    console.print(_summary(run))
    for c in run.claims:
        if c.verdict in ("refuted", "inconclusive"):
            console.print(f"[{_STYLE[c.verdict]}]{c.verdict}[/] {c.claim}. {c.subject}: {c.reason}",
                          highlight=False, soft_wrap=True)
        for p in c.parts:
            if p.status == MACHINE:
                console.print(f"[magenta]machine effect[/] {c.claim}. {c.subject}, {p.name}: {p.detail}",
                              highlight=False, soft_wrap=True)
    out = run.output_dir
    console.print(f"wrote {out / 'claims.json'}, {out / 'claims.md'}, {out / 'claims.png'} "
                  f"in {run.seconds:.0f} s", highlight=False)
