"""What `deploy claims` is told: its settings, checked, and the defaults of its quick and full modes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from deploy.core.errors import BadInputError
from deploy.core.limits import check_finite, check_input_size, check_seed
from exporters.onnx import check_exporter
from validators.sequential import MARGIN


@dataclass(frozen=True)
class ClaimsProfile:
    """The defaults of one mode of `deploy claims`: the input size (None: each model's own), batch sizes,
    parity samples, warm-up, seconds per comparison (batch 1, larger batches) and exporter."""

    input_size: Optional[tuple[int, int]]
    batches: tuple[int, ...]
    parity_samples: int
    warmup: str
    seconds: tuple[float, float]
    exporter: str


QUICK = ClaimsProfile((64, 64), (1, 8), 2, "0.5s", (2.0, 3.0), "torchscript")
FULL = ClaimsProfile(None, (1, 64), 4, "2s", (20.0, 120.0), "dynamo")


@dataclass
class ClaimsSettings:
    """Options of `deploy claims`; None means the quick-mode or full-size default."""

    output_dir: Path = Path("claims")
    backend: str = "auto"  # auto | ort | trt | torch
    device: str = "cpu"  # the torch backend's device: cpu | cuda
    batches: Optional[tuple[int, ...]] = None
    quick: bool = False
    input_size: Optional[tuple[int, int]] = None  # (H, W)
    warmup: Optional[str] = None
    iters: Optional[int] = None  # pairs per comparison (cap)
    duration: Optional[float] = None  # seconds per comparison (cap, warm-up included)
    parity_samples: Optional[int] = None
    threads: Optional[int] = None
    seed: int = 0
    exporter: Optional[str] = None  # dynamo | torchscript (default: dynamo; quick mode: torchscript, faster)
    margin: float = MARGIN  # the A/A interval is widened by this ratio on each side

    def defaults(self) -> ClaimsProfile:
        return QUICK if self.quick else FULL

    def batch_list(self) -> list[int]:
        batches = list(self.batches or self.defaults().batches)
        if any(b < 1 for b in batches):
            raise BadInputError(f"`batches` {batches}: batch sizes must be >= 1")
        return sorted(set(batches))

    def seconds_for(self, batch: int) -> float:
        """Time budget of one A/B comparison at ``batch``."""
        if self.duration is not None:
            return self.duration
        small, large = self.defaults().seconds
        return small if batch == 1 else large

    def check(self) -> None:
        check_finite("duration", self.duration, positive=True)
        check_finite("margin", self.margin)
        if not 0 <= self.margin <= 0.5:
            raise BadInputError(f"`margin` {self.margin}: give a ratio in [0, 0.5] (0.01 widens the A/A band by 1 %)")
        check_seed(self.seed)
        if self.input_size is not None:
            check_input_size("input_size", self.input_size)
        if self.iters is not None and self.iters < 3:
            raise BadInputError(f"`iters` {self.iters}: the harness needs at least 3 pairs")
        if self.input_size is not None and min(self.input_size) < 16:
            raise BadInputError(f"`input_size` {'x'.join(map(str, self.input_size))} is too small for ResNet-50: use "
                                "32 or more")
        if self.exporter is not None:
            check_exporter(self.exporter)
        if self.threads is not None and self.threads < 1:
            raise BadInputError(f"`threads` {self.threads} must be >= 1")


# ---------------------------------------------------------------- backend

