"""The model-source options (what the model file is and how to read it) and the conv-kind options
(--conv, --conv-opt, --ratio) of the commands that load or build torch models.

They read the conv-kind registry (``deploy.layers.registry``), which imports torch, so only the
torch-side commands (export, validate, zoo) import this module; ``deploy.commands.options`` holds
the torch-free groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from deploy.commands.common import finite, warn
from deploy.core.errors import BadInputError
from deploy.layers.registry import conv_kind, conv_kinds
from deploy.load.source import ModelSource

SOURCE = "Model source"


def conv_help(what: str = "Conv kind") -> str:
    """``--conv`` help listing the registered kinds."""
    return f"{what}: {', '.join(k.name for k in conv_kinds())}."


def conv_opt_help() -> str:
    """``--conv-opt`` help listing each kind's options."""
    kinds = "; ".join(f"{k.name}: {', '.join(o.name for o in k.options)}" for k in conv_kinds() if k.options)
    return f"Option of the conv kind, KEY=VALUE, repeatable (typed and checked). Options per kind — {kinds}."


def ratio_help() -> str:
    """``--ratio`` help: the alias, and which kinds take a ratio."""
    owners = [f"{k.name} ({k.option('ratio').help})" for k in conv_kinds() if any(o.name == "ratio" for o in k.options)]
    return f"Alias for --conv-opt ratio=R: {', '.join(owners) or 'no registered kind takes a ratio'}."


def conv_options(conv: Optional[str], items: Optional[list[str]], ratio: Optional[float]) -> dict[str, Any]:
    """``--conv-opt KEY=VALUE`` (and the ``--ratio`` alias) -> the kind's typed options."""
    raw: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInputError(f"--conv-opt {item!r}: give KEY=VALUE, e.g. --conv-opt ratio=0.25")
        if key in raw:
            raise BadInputError(f"--conv-opt {key} is given twice: give each option once")
        raw[key] = value
    if ratio is not None:
        if "ratio" in raw:
            raise BadInputError("--ratio and --conv-opt ratio=… both given: give one")
        raw["ratio"] = repr(ratio)
    if conv is None:
        if raw:
            raise BadInputError("--conv-opt/--ratio need --conv (they describe the conv kind's options)")
        return {}
    return conv_kind(conv).parse_options(raw)


MODEL = typer.Argument(..., help="model.pt: a convdeploy checkpoint, a bare state_dict (with --arch/--conv, or "
                       "--model-class), a reference checkpoint (SCNet, SCNet-v1d, SPConv, DO-Conv), a pickled module "
                       "(--trust-pickle) or a torch.export .pt2 file.")
ARCH = typer.Option(None, "--arch", rich_help_panel=SOURCE, help="Arch of a bare state_dict.")
CONV = typer.Option(None, "--conv", rich_help_panel=SOURCE, help=conv_help("Conv kind of a bare state_dict"))
CONV_OPT = typer.Option(None, "--conv-opt", rich_help_panel=SOURCE, help=conv_opt_help())
RATIO = typer.Option(None, "--ratio", callback=finite, rich_help_panel=SOURCE, help=ratio_help())
MODEL_CLASS = typer.Option(None, "--model-class", metavar="PACKAGE.MODULE:CLASS", rich_help_panel=SOURCE,
                           help="Your own nn.Module class a bare state_dict is loaded into (strictly); it must be "
                                "importable (run from its directory or set PYTHONPATH).")
MODEL_ARGS = typer.Option(None, "--model-args", metavar="JSON", rich_help_panel=SOURCE,
                          help="Arguments of --model-class: a JSON object (keywords) or array (positional).")
TRUST_PICKLE = typer.Option(False, "--trust-pickle", rich_help_panel=SOURCE,
                            help="Allow a pickled whole module, or a .pt2 that runs code while it loads (runs code "
                                 "from the file).")


def model_source(model: Path, *, arch: Optional[str], conv: Optional[str], conv_opt: Optional[list[str]],
                 ratio: Optional[float], model_class: Optional[str], model_args: Optional[str],
                 trust_pickle: bool) -> ModelSource:
    """The library's ``ModelSource`` from the model-source options; ``--trust-pickle`` says what it allows."""
    if trust_pickle:  # a UserWarning would be filtered by the CLI: print it
        warn("--trust-pickle: a pickled module runs code from the file while it loads; use it only for files "
             "you trust")
    return ModelSource(checkpoint=model, arch=arch, conv=conv, conv_kwargs=conv_options(conv, conv_opt, ratio),
                       trust_pickle=trust_pickle, model_class=model_class, model_args=model_args)
