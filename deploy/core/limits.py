"""Bounds on the numbers a user gives, checked before any work (exit 2, one line).

The CLI refuses NaN and infinity already while it parses options (its ``finite`` callback);
everything else is checked here, for the CLI and Python callers alike. Documented in the
README ("Exit codes").
"""

from __future__ import annotations

import math
from typing import Sequence

from deploy.core.errors import BadInputError

#: the largest input tensor a run feeds (batch x C x H x W elements: 1 GiB of float32)
MAX_INPUT_ELEMENTS = 1 << 28
#: the largest height or width
MAX_SIDE = 4096
#: the largest seed numpy and torch both take
MAX_SEED = 2**32 - 1
#: the most seeded parity inputs per batch size
MAX_SAMPLES = 1024
#: the most weight elements (parameters and buffers) of a model convdeploy builds: 4 GiB of float32,
#: folded on a float64 copy beside it
MAX_MODEL_ELEMENTS = 1 << 30
#: the largest intermediate tensor of a model convdeploy builds, at batch 1
MAX_ACTIVATION_ELEMENTS = 1 << 28


def check_finite(name: str, value: float | None, *, positive: bool = False) -> None:
    """``value`` must be a finite number (and > 0 with ``positive``, else >= 0); None passes."""
    if value is None:
        return
    if not math.isfinite(value):
        raise BadInputError(f"`{name}` must be a finite number, got {value}")
    if positive and value <= 0:
        raise BadInputError(f"`{name}` must be > 0, got {value}")
    if value < 0:
        raise BadInputError(f"`{name}` must be >= 0, got {value}")


def check_seed(seed: int) -> None:
    """A seed numpy and torch both accept: 0 <= seed < 2**32."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise BadInputError(f"`seed` must be an integer in [0, {MAX_SEED}], got {seed!r}")


def check_samples(samples: int) -> None:
    """1 <= ``samples`` <= ``MAX_SAMPLES``."""
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise BadInputError(f"`samples` must be an integer in [1, {MAX_SAMPLES}], got {samples!r}")


def check_input_size(name: str, sides: Sequence[int]) -> None:
    """Every height/width at most ``MAX_SIDE``."""
    big = [s for s in sides if s > MAX_SIDE]
    if big:
        raise BadInputError(f"`{name}` {big[0]} is larger than the {MAX_SIDE} pixels convdeploy runs: "
                            "choose a smaller size")


def check_input_elements(shape: Sequence[int], name: str = "batch") -> None:
    """A whole input of ``shape`` (N, C, H, W) within ``MAX_INPUT_ELEMENTS``."""
    elements = math.prod(int(s) for s in shape)
    if elements > MAX_INPUT_ELEMENTS:
        text = "x".join(str(int(s)) for s in shape)
        raise BadInputError(f"an input of {text} ({elements:,} elements) is larger than the {MAX_INPUT_ELEMENTS:,} "
                            f"elements convdeploy feeds: choose a smaller `{name}`")


def check_model_size(what: str, weight_elements: int, largest_activation: int | None) -> None:
    """A model to be built within ``MAX_MODEL_ELEMENTS`` weights and ``MAX_ACTIVATION_ELEMENTS`` per
    intermediate tensor (None: not known before it runs)."""
    if weight_elements > MAX_MODEL_ELEMENTS:
        raise BadInputError(f"{what} would hold {weight_elements:,} weight elements, more than the "
                            f"{MAX_MODEL_ELEMENTS:,} convdeploy builds: choose smaller options")
    if largest_activation is not None and largest_activation > MAX_ACTIVATION_ELEMENTS:
        raise BadInputError(f"{what} would compute a tensor of {largest_activation:,} elements at batch 1, more "
                            f"than the {MAX_ACTIVATION_ELEMENTS:,} convdeploy runs: choose smaller options or a "
                            "smaller `input_size`")
