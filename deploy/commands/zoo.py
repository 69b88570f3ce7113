"""`deploy zoo list | create | train`: the model zoo from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.table import Table

from deploy.claims.counts import CONVENTIONS, zoo_row
from deploy.commands.common import console, finite, guarded, machine_output
from deploy.commands.options import JSON_FILE
from deploy.commands.printing import RichProgress
from deploy.commands.source_options import conv_help, conv_opt_help, conv_options, ratio_help
from deploy.core.errors import BadInputError
from deploy.core.limits import check_seed
from deploy.core.pathguard import guard_paths
from deploy.core.shapes import parse_input_size
from deploy.data.preprocess import META_KEY, PRESETS
from deploy.load.checkpoint import save_checkpoint
from deploy.models.complexity import count_params
from deploy.models.digits import load_digits
from deploy.models.random_init import random_model
from deploy.models.train import train_classifier
from deploy.models.zoo import archs, build_model, zoo_entries
from deploy.version import __version__

app = typer.Typer(
    help="The model zoo: ResNet-18/34/50/101, CIFAR ResNet-20 and SCNet-50/101 with each paper's layer.",
    no_args_is_help=True,
    add_completion=False,  # completion is the root's (`deploy --install-completion`)
)

_CONV_OPT = typer.Option(None, "--conv-opt", help=conv_opt_help())
_RATIO = typer.Option(None, "--ratio", callback=finite, help=ratio_help())


def _fmt(value: Optional[float], unit: float, digits: int) -> str:
    return "-" if value is None else f"{value / unit:.{digits}f}"


def _row_text(row: dict[str, Any], convention: str) -> list[str]:
    unit_p, unit_m, m_name = (1e6, 1e6, "M") if row["arch"] == "resnet20" else (1e6, 1e9, "G")
    conv = row["conv"] + "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
                                 for k, v in row["conv_kwargs"].items())
    macs = row["macs_thop"] if convention == "thop" else row["macs"]
    mac_ratio = f"{macs / row['paper_macs']:.3f}" if row["paper_macs"] else "-"
    mac_ratio += " *" if _other_convention(row, convention) else ""
    return [
        row["arch"],
        conv,
        _fmt(row["params"], unit_p, 3),
        row["paper_printed"][0] if row["paper_printed"] else "-",
        _fmt(macs, unit_m, 3) + f" {m_name}",
        row["paper_printed"][1] if row["paper_printed"] else "-",
        mac_ratio,
        (row["paper_source"] or "").split(" (")[0].split(";")[0],
    ]


def _other_convention(row: dict[str, Any], convention: str) -> bool:
    """The paper counted this row's MACs in another convention than the one shown (its note says so)."""
    return bool(row["paper_note"]) and row["paper_convention"] != convention


@app.command("list")
@guarded
def list_models(
    arch: Optional[list[str]] = typer.Option(None, "--arch", help="Only these archs (repeatable). Default: all."),
    convention: str = typer.Option("conv", "--convention", help="MAC convention of the table: conv (convolutions "
                                   "and matrix products, FlopCounterMode) or thop (what SPConv's tables count)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON (both conventions) on stdout; the "
                                 "table is not printed."),
    json_file: Optional[Path] = JSON_FILE,
) -> None:
    """Every arch x conv with params and MACs (deploy form), beside the papers' figures."""
    if convention not in CONVENTIONS:
        raise BadInputError(f"--convention {convention!r}: choose {' or '.join(CONVENTIONS)}")
    known = archs()
    wanted = list(arch) if arch else list(known)
    unknown = [a for a in wanted if a not in known]
    if unknown:
        raise BadInputError(f"unknown arch {', '.join(unknown)}; choose from {', '.join(known)}")
    entries = zoo_entries(wanted)
    rows = []
    with machine_output(as_json, json_file) as out:
        with RichProgress(transient=True) as progress:
            progress.task("counting params and MACs", len(entries))
            for arch_name, conv, kwargs in entries:
                progress.update(text=f"{arch_name} conv={conv}")
                rows.append(zoo_row(arch_name, conv, kwargs))
                progress.update(advance=1)
        out.emit({"conventions": {"macs": CONVENTIONS["conv"], "macs_thop": CONVENTIONS["thop"]}, "rows": rows})
    if not as_json:
        _print_zoo(rows, convention)


def _print_zoo(rows: list[dict[str, Any]], convention: str) -> None:
    table = Table(title="convdeploy zoo", caption=CONVENTIONS[convention], caption_justify="left")
    for col in ("arch", "conv", "params M", "paper", "MACs", "paper MACs", "MACs/paper", "paper source"):
        left = col in ("arch", "conv", "paper source")
        table.add_column(col, justify="left" if left else "right", no_wrap=col != "paper source")
    for row in rows:
        table.add_row(*_row_text(row, convention))
    console.print(table)
    for note in dict.fromkeys(row["paper_note"] for row in rows if _other_convention(row, convention)):
        console.print(f"* {note}", highlight=False)


@app.command("create")
@guarded
def create(
    arch: str = typer.Argument(..., help="|".join(archs())),
    conv: Optional[str] = typer.Option(None, "--conv", help=conv_help("Conv kind (default: the arch's own)")),
    conv_opt: Optional[list[str]] = _CONV_OPT,
    ratio: Optional[float] = _RATIO,
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classifier outputs (default: the arch's)."),
    input_size: Optional[str] = typer.Option(None, "--input-size", metavar="H|HxW",
                                             help="Input height and width recorded in the checkpoint, e.g. 64 or "
                                                  "64x48 (default: the arch's)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random weights and BN statistics."),
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write (model.pt)."),
) -> None:
    """Write a checkpoint with seeded random weights and non-trivial BatchNorm statistics."""
    guard_paths(inputs={}, outputs={"`output`": output})
    check_seed(seed)
    kwargs = conv_options(conv, conv_opt, ratio)
    model = random_model(arch, conv, input_size=parse_input_size(input_size), num_classes=num_classes, seed=seed,
                         **kwargs)
    save_checkpoint(model, output, meta={"created_by": "deploy zoo create", "seed": seed, "version": __version__})
    console.print(
        f"wrote {output}: {model.arch} conv={model.conv} {model.conv_kwargs or ''} input {tuple(model.input_shape)}, "
        f"{count_params(model) / 1e6:.3f} M trainable params (training form)"
    )


@app.command("train")
@guarded
def train(
    arch: str = typer.Argument(..., help="Zoo arch; resnet20 suits the 32x32 digits."),
    conv: Optional[str] = typer.Option(None, "--conv", help=conv_help("Conv kind (default: the arch's own)")),
    conv_opt: Optional[list[str]] = _CONV_OPT,
    ratio: Optional[float] = _RATIO,
    data: str = typer.Option("digits", "--data", help="Training data; 'digits' (bundled, 1797 real images)."),
    epochs: int = typer.Option(5, "--epochs", min=1, help="Passes over the training split."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, shuffling and augmentation."),
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write (model.pt)."),
) -> None:
    """Train a zoo model on a bundled data set and save it as a convdeploy checkpoint."""
    if data != "digits":
        raise BadInputError(f"unknown --data {data!r}: the bundled data set is 'digits'")
    guard_paths(inputs={}, outputs={"`output`": output})
    check_seed(seed)
    kwargs = conv_options(conv, conv_opt, ratio)
    torch.manual_seed(seed)
    model = build_model(arch, conv, 10, **kwargs)
    train_split, test_split = load_digits(size=32)
    model.input_shape = (int(train_split.x.shape[1]), int(train_split.x.shape[2]), int(train_split.x.shape[3]))
    steps = epochs * ((len(train_split.y) + 63) // 64)
    name = f"{model.arch} conv={model.conv}"
    with RichProgress(transient=True) as progress:
        progress.task(f"training {name} on digits", steps)

        def on_step(step: int, loss: float) -> None:
            progress.update(completed=step, text=f"loss {loss:.3f}")

        result = train_classifier(model, train_split, test_split, epochs=epochs, seed=seed, on_step=on_step)
    meta = {
        "created_by": "deploy zoo train",
        "dataset": "digits",
        "epochs": epochs,
        "seed": seed,
        "train_accuracy": result.train_accuracy,
        "test_accuracy": result.test_accuracy,
        "version": __version__,
        META_KEY: PRESETS["digits"].to_dict(),  # how an image becomes its input (deploy eval reads it)
    }
    save_checkpoint(model, output, meta=meta)
    console.print(
        f"trained {name} on digits for {epochs} epochs in {result.seconds:.1f} s: "
        f"loss {result.final_loss:.3f}, train accuracy {result.train_accuracy:.1%}, "
        f"held-out accuracy {result.test_accuracy:.1%} ({len(test_split.y)} images); wrote {output}"
    )
