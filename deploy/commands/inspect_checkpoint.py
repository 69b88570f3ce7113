"""The torch side of `deploy inspect`: what a .pt checkpoint holds (imported only for a .pt file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.load.checkpoint import load_checkpoint
from deploy.models.complexity import count_params


def checkpoint_record(path: Path, trust_pickle: bool) -> dict[str, Any]:
    """The record of ``deploy inspect --json`` for a checkpoint: source, hash, arch, conv, params, meta."""
    loaded = load_checkpoint(path, trust_pickle=trust_pickle)
    return {"file": str(path), **loaded.describe(), "params": count_params(loaded.model), "meta": loaded.meta}
