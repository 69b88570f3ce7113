"""The conv-kind options of the commands that build or load torch models: --conv, --conv-opt, --ratio.

They read the conv-kind registry (``deploy.layers.registry``), which imports torch, so only the
torch-side commands (export, validate, zoo) import this module; ``deploy.commands.common`` stays
torch-free for the commands on ONNX files.
"""

from __future__ import annotations

from typing import Any, Optional

from deploy.core.errors import BadInputError
from deploy.layers.registry import conv_kind, conv_kinds


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
