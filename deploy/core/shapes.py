"""Shapes a user gives, parsed and bounded (torch-free): ``H`` or ``HxW`` input sizes, ``CxHxW``
input shapes, the dynamic axes, one batch size; and the second spatial size parity checks a
graph with dynamic H/W at. Every command that takes ``--input-size`` or ``--batch`` parses it here,
so a flag means the same everywhere.
"""

from __future__ import annotations

from typing import Sequence

from deploy.core.errors import BadInputError
from deploy.core.limits import check_input_elements, check_input_size


def _positive_ints(text: str, count: tuple[int, ...], name: str, example: str) -> tuple[int, ...]:
    parts = text.lower().replace(" ", "").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in count or min(values, default=0) < 1:
        raise BadInputError(f"`{name}` must be {example} with positive sizes, got {text!r}")
    return values


def parse_input_size(value: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """``"64"`` / ``64`` -> (64, 64); ``"64x48"`` / ``(64, 48)`` -> (64, 48) (height x width)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadInputError(f"`input_size` must be H or HxW with positive sizes, got {value!r}")
    if isinstance(value, int):
        values: tuple[int, ...] = _positive_ints(str(value), (1,), "input_size", "H or HxW")
    elif isinstance(value, str):
        values = _positive_ints(value, (1, 2), "input_size", "H or HxW")
    else:
        values = _positive_ints("x".join(str(v) for v in value), (1, 2), "input_size", "H or HxW")
    check_input_size("input_size", values)
    return (values[0], values[-1])


def parse_input_shape(value: str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """``"3x64x48"`` / ``(3, 64, 48)`` -> (C, H, W)."""
    if value is None:
        return None
    if not isinstance(value, (str, Sequence)) or isinstance(value, bytes):
        raise BadInputError(f"`input_shape` must be CxHxW text or a (C, H, W) sequence, got {type(value).__name__}")
    text = value if isinstance(value, str) else "x".join(str(v) for v in value)
    c, h, w = _positive_ints(text, (3,), "input_shape", "CxHxW")
    check_input_size("input_shape", (h, w))
    check_input_elements((c, h, w), "input_shape")
    return (c, h, w)


def parse_dynamic(dynamic: str | None, batch: str | int | None) -> tuple[int | None, bool]:
    """(fixed batch size or None for a dynamic batch axis, whether H/W are dynamic).

    ``dynamic`` is ``batch`` (the default), ``hw``, ``batch,hw`` or ``none``; ``batch`` is
    ``dynamic`` or a fixed size. A fixed ``batch`` with the default ``dynamic`` fixes the
    batch axis; a ``dynamic`` without ``batch`` fixes it at 1.
    """
    parts = {p.strip() for p in (dynamic or "batch").lower().split(",") if p.strip()}
    if not parts or not parts <= {"batch", "hw", "none"} or ("none" in parts and len(parts) > 1):
        raise BadInputError(f"`dynamic` must be batch, hw, batch,hw or none, got {dynamic!r}")
    fixed = parse_batch(batch)
    if fixed is not None and "batch" in parts:
        if dynamic is not None:
            raise BadInputError(f"`batch` {fixed} fixes the batch axis, but `dynamic` {dynamic} makes it dynamic: "
                                "give one of them")
        parts.discard("batch")
    if "batch" not in parts and fixed is None:
        fixed = 1
    return fixed, "hw" in parts


def second_size(input_shape: Sequence[int]) -> tuple[int, int]:
    """The other spatial size parity checks a graph with dynamic H/W at: twice H and W, which
    keeps every divisibility a network needs (strides, pooling windows)."""
    return (2 * int(input_shape[1]), 2 * int(input_shape[2]))


def parse_batch(batch: str | int | None) -> int | None:
    """None for a dynamic batch axis (``None`` or ``"dynamic"``), else the fixed batch size."""
    if batch is None or batch == "dynamic":
        return None
    try:
        value = int(batch)
    except ValueError:
        raise BadInputError(f"`batch` must be a positive integer, got {batch!r}") from None
    if value < 1:
        raise BadInputError(f"`batch` must be a positive integer, got {batch!r}")
    check_input_elements((value,))
    return value


