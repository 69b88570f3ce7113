"""`deploy zoo list | create | train`: the model zoo from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from deploy import __version__
from deploy.checkpoint import save_checkpoint
from deploy.commands.common import console, guarded
from deploy.atomic import check_output_path
from deploy.errors import BadInputError
from deploy.models.complexity import count_macs, count_params

app = typer.Typer(
    help="The model zoo: ResNet-18/34/50/101, CIFAR ResNet-20 and SCNet-50/101 with each paper's layer.",
    no_args_is_help=True,
)

CONVENTION = (
    "params: trainable parameters of the deploy form as the papers count it (CoC/DO-Conv folded to "
    "convolutions, BatchNorm kept); MACs: multiply-accumulates of Conv2d and Linear layers, counted "
    "with forward hooks at batch 1 and the arch's input size (FLOPs = 2 x MACs)."
)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def conv_kwargs_from_options(conv: str, ratio: Optional[float]) -> dict[str, Any]:
    """The CLI's --ratio belongs to SPConv only; say so instead of ignoring it."""
    if ratio is not None and conv != "sp":
        raise BadInputError(f"--ratio applies to --conv sp only (got --conv {conv})")
    return {"ratio": ratio} if conv == "sp" and ratio is not None else {}


def _build(arch: str, conv: str, kwargs: dict[str, Any], num_classes: Optional[int]):
    from deploy.models.registry import build_model

    try:
        return build_model(arch, conv, num_classes=num_classes, **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise BadInputError(str(exc).strip("'\"")) from exc


SP_RATIOS = (0.5, 0.25, 0.125)


def zoo_entries(archs: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(arch, conv, kwargs) for every zoo model; SPConv at each of the paper's ratios."""
    from deploy.models.registry import supported_convs

    entries = []
    for arch in archs:
        for conv in supported_convs(arch):
            ratios = [{"ratio": r} for r in SP_RATIOS] if conv == "sp" else [{}]
            entries.extend((arch, conv, kwargs) for kwargs in ratios)
    return entries


def paper_target(arch: str, conv: str, kwargs: dict[str, Any]):
    """The paper's row for this model, or None when no paper prints one."""
    from deploy.models.registry import PAPER_TARGETS

    return next((t for t in PAPER_TARGETS if (t.arch, t.conv, t.conv_kwargs) == (arch, conv, kwargs)), None)


def zoo_row(arch: str, conv: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Params and MACs of one zoo entry in the papers' deploy form, beside the paper's figures.

    The model is built on the meta device: counting needs shapes only, so even ResNet-101
    at 224x224 counts in milliseconds.
    """
    import torch

    from deploy.fold import fold_model
    from deploy.models.registry import parse_count

    with torch.device("meta"):
        model = _build(arch, conv, kwargs, None).eval()
    deploy_form, _ = fold_model(model, inplace=True, fuse_bn=False, measure=False)
    target = paper_target(arch, conv, dict(model.conv_kwargs))
    return {
        "arch": arch,
        "conv": conv,
        "conv_kwargs": dict(model.conv_kwargs),
        "input_shape": list(model.input_shape),
        "params": count_params(deploy_form),
        "macs": count_macs(deploy_form, tuple(model.input_shape)),
        "paper_params": parse_count(target.params)[0] if target else None,
        "paper_macs": parse_count(target.macs)[0] if target else None,
        "paper_printed": [target.params, target.macs] if target else None,
        "paper_source": target.source if target else None,
        "paper_note": target.note if target else "",
    }


def _fmt(value: Optional[float], unit: float, digits: int) -> str:
    return "-" if value is None else f"{value / unit:.{digits}f}"


def _row_text(row: dict[str, Any]) -> list[str]:
    unit_p, unit_m, m_name = (1e6, 1e6, "M") if row["arch"] == "resnet20" else (1e6, 1e9, "G")
    conv = row["conv"] + "".join(f" {k}={v:g}" for k, v in row["conv_kwargs"].items())
    mac_ratio = f"{row['macs'] / row['paper_macs']:.3f}" if row["paper_macs"] else "-"
    mac_ratio += " *" if row["paper_note"] else ""
    return [
        row["arch"],
        conv,
        _fmt(row["params"], unit_p, 3),
        row["paper_printed"][0] if row["paper_printed"] else "-",
        _fmt(row["macs"], unit_m, 3) + f" {m_name}",
        row["paper_printed"][1] if row["paper_printed"] else "-",
        mac_ratio,
        (row["paper_source"] or "").split(" (")[0].split(";")[0],
    ]


@app.command("list")
@guarded
def list_models(
    arch: Optional[list[str]] = typer.Option(None, "--arch", help="Only these archs (repeatable). Default: all."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON instead."),
) -> None:
    """Every arch x conv with params and MACs (deploy form), beside the papers' figures."""
    from deploy.models.registry import ARCHS

    archs = list(arch) if arch else list(ARCHS)
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        raise BadInputError(f"unknown arch {', '.join(unknown)}; choose from {', '.join(ARCHS)}")
    entries = zoo_entries(archs)
    rows = []
    with _progress() as progress:
        task = progress.add_task("counting params and MACs", total=len(entries))
        for arch_name, conv, kwargs in entries:
            progress.update(task, description=f"{arch_name} conv={conv}")
            rows.append(zoo_row(arch_name, conv, kwargs))
            progress.advance(task)
    if as_json:
        typer.echo(json.dumps({"convention": CONVENTION, "rows": rows}, indent=2))
        return
    table = Table(title="convdeploy zoo", caption=CONVENTION, caption_justify="left")
    for col in ("arch", "conv", "params M", "paper", "MACs", "paper MACs", "MACs/paper", "paper source"):
        table.add_column(col, justify="left" if col in ("arch", "conv", "paper source") else "right", no_wrap=col != "paper source")
    for row in rows:
        table.add_row(*_row_text(row))
    console.print(table)
    for note in dict.fromkeys(row["paper_note"] for row in rows if row["paper_note"]):
        console.print(f"* {note}", highlight=False)


@app.command("create")
@guarded
def create(
    arch: str = typer.Argument(..., help="resnet18|resnet34|resnet50|resnet101|resnet20|scnet50|scnet101"),
    conv: str = typer.Option("plain", "--conv", help="plain|coc|doconv|ic|sp (sc for scnet)."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="SPConv split ratio alpha (0.5, 0.25, 0.125)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classifier outputs (default: the arch's)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Input height/width recorded in the checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random weights and BN statistics."),
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write (model.pt)."),
) -> None:
    """Write a checkpoint with seeded random weights and non-trivial BatchNorm statistics."""
    import torch

    from deploy.models.random_init import randomize_model

    check_output_path(output)
    kwargs = conv_kwargs_from_options(conv, ratio)
    torch.manual_seed(seed)
    model = _build(arch, conv, kwargs, num_classes)
    if input_size is not None:
        if input_size < 8:
            raise BadInputError(f"--input-size {input_size} is too small: use at least 8")
        model.input_shape = (model.input_shape[0], input_size, input_size)
    try:
        randomize_model(model, tuple(model.input_shape), seed=seed)
    except (RuntimeError, ValueError) as exc:
        size = "x".join(map(str, model.input_shape[1:]))
        reason = str(exc).strip().splitlines()[0][:200]
        raise BadInputError(f"{arch} cannot take a {size} input ({reason}); choose another --input-size") from exc
    model.eval()
    save_checkpoint(model, output, meta={"created_by": "deploy zoo create", "seed": seed, "version": __version__})
    console.print(
        f"wrote {output}: {arch} conv={conv} {kwargs or ''} input {tuple(model.input_shape)}, "
        f"{count_params(model) / 1e6:.3f} M trainable params (training form)"
    )


@app.command("train")
@guarded
def train(
    arch: str = typer.Argument(..., help="Zoo arch; resnet20 suits the 32x32 digits."),
    conv: str = typer.Option("plain", "--conv", help="plain|coc|doconv|ic|sp (sc for scnet)."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="SPConv split ratio alpha."),
    data: str = typer.Option("digits", "--data", help="Training data; 'digits' (bundled, 1797 real images)."),
    epochs: int = typer.Option(5, "--epochs", min=1, help="Passes over the training split."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, shuffling and augmentation."),
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint to write (model.pt)."),
) -> None:
    """Train a zoo model on a bundled data set and save it as a convdeploy checkpoint."""
    import torch

    from deploy.digits import load_digits
    from deploy.train import train_classifier

    if data != "digits":
        raise BadInputError(f"unknown --data {data!r}: the bundled data set is 'digits'")
    check_output_path(output)
    kwargs = conv_kwargs_from_options(conv, ratio)
    torch.manual_seed(seed)
    model = _build(arch, conv, kwargs, 10)
    train_split, test_split = load_digits(size=32)
    model.input_shape = tuple(train_split.x.shape[1:])
    steps = epochs * ((len(train_split.y) + 63) // 64)
    with _progress() as progress:
        task = progress.add_task(f"training {arch} conv={conv} on digits", total=steps)

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step, description=f"training {arch} conv={conv}  loss {loss:.3f}")

        result = train_classifier(model, train_split, test_split, epochs=epochs, seed=seed, on_step=on_step)
    meta = {
        "created_by": "deploy zoo train",
        "dataset": "digits",
        "epochs": epochs,
        "seed": seed,
        "train_accuracy": result.train_accuracy,
        "test_accuracy": result.test_accuracy,
        "version": __version__,
    }
    save_checkpoint(model, output, meta=meta)
    console.print(
        f"trained {arch} conv={conv} on digits for {epochs} epochs in {result.seconds:.1f} s: "
        f"loss {result.final_loss:.3f}, train accuracy {result.train_accuracy:.1%}, "
        f"held-out accuracy {result.test_accuracy:.1%} ({len(test_split.y)} images); wrote {output}"
    )
