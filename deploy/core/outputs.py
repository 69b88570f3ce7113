"""Every output of a model, flattened into one named list (the names the ONNX graph's outputs get).

A model may return one tensor, a tuple or list, a dict, or any nesting of those. The
flattened order is the one ``torch.utils._pytree`` (and so ``torch.export`` and the ONNX
exporters) uses: sequences in order, dicts in insertion order. Names:

* a single tensor is ``output`` (the interface of every single-output export);
* a dict entry is its key (``boxes``, ``scores``);
* a sequence entry is ``output_0``, ``output_1``, … at the top level;
* nested entries join their path with ``_``: ``{"det": (b, s)}`` -> ``det_0``, ``det_1``;
  ``((a, b), c)`` -> ``output_0_0``, ``output_0_1``, ``output_1``.

A foundation module: duck-typed, it imports neither torch nor numpy, so that the torch
runtime, the ONNX Runtime runtime and the exporter all name outputs the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

from deploy.core.errors import BadInputError

SINGLE_OUTPUT = "output"


def _join(prefix: str, part: object) -> str:
    return f"{prefix}_{part}" if prefix else str(part)


def _walk(obj: Any, prefix: str, is_leaf: Callable[[Any], bool], out: list[tuple[str, Any]]) -> None:
    if is_leaf(obj):
        out.append((prefix or SINGLE_OUTPUT, obj))
    elif isinstance(obj, Mapping):
        if not obj:
            raise BadInputError(f"the model returns an empty dict{' at ' + prefix if prefix else ''}: return tensors")
        for key, value in obj.items():
            _walk(value, _join(prefix, key), is_leaf, out)
    elif isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        if not obj:
            raise BadInputError(f"the model returns an empty sequence{' at ' + prefix if prefix else ''}: "
                                "return tensors")
        for i, value in enumerate(obj):
            _walk(value, _join(prefix or SINGLE_OUTPUT, i), is_leaf, out)
    else:
        where = prefix or SINGLE_OUTPUT
        raise BadInputError(f"the model's output {where} is a {type(obj).__name__}, not a tensor: "
                            "return tensors (in a tuple, list or dict) only")


def flatten_outputs(obj: Any, is_leaf: Callable[[Any], bool]) -> list[tuple[str, Any]]:
    """``[(name, leaf), …]`` for a model's output ``obj``; ``is_leaf`` says what a tensor is.

    Raises ``BadInputError`` for a non-tensor leaf (``None``, a number, a string) and for
    two entries that would get the same name.
    """
    out: list[tuple[str, Any]] = []
    _walk(obj, "", is_leaf, out)
    names = [n for n, _ in out]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise BadInputError(f"two of the model's outputs would both be named {', '.join(clash)}: "
                            "rename the dict keys so that the flattened names differ")
    return out
