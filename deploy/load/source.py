"""Where a model comes from, as one record: a file (and what says how to read it) or an in-memory
module. Export, validate and the PyTorch bench backend all load through it, and the output-path
guard asks it which files the load reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from deploy.core.errors import BadInputError
from deploy.load.checkpoint import load_checkpoint
from deploy.load.formats import model_class_file
from deploy.load.module import LoadedModel, loaded_from_module

_TYPES: dict[str, tuple[type, ...]] = {"arch": (str,), "conv": (str,), "model_class": (str,), "trust_pickle": (bool,),
                                       "conv_kwargs": (dict,)}


@dataclass(frozen=True, eq=False)
class ModelSource:
    """A checkpoint file (with ``arch``/``conv``/``conv_kwargs`` for a bare state_dict of a zoo model,
    ``model_class``/``model_args`` for one of the user's class, ``trust_pickle`` for a pickled module)
    or an in-memory ``module`` (the Python API)."""

    checkpoint: Path | None = None
    module: nn.Module | None = None
    arch: str | None = None
    conv: str | None = None
    conv_kwargs: dict[str, Any] = field(default_factory=dict)
    trust_pickle: bool = False
    model_class: str | None = None  # package.module:Class of a bare state_dict
    model_args: Any = None  # its constructor's arguments (JSON text, a dict or a list)

    def check_types(self) -> None:
        """BadInputError naming a field of the wrong type (the Python API's arguments)."""
        for name, kinds in _TYPES.items():
            value = getattr(self, name)
            if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
                raise BadInputError(f"`{name}` must be a {' or '.join(k.__name__ for k in kinds)}, got "
                                    f"{type(value).__name__} {value!r}")

    def load(self) -> LoadedModel:
        """The eval-mode model, checked (``deploy.load.checkpoint``)."""
        self.check_types()
        if self.module is not None:
            return loaded_from_module(self.module)
        if self.checkpoint is None:
            raise BadInputError("give a checkpoint file or a module to export")
        return load_checkpoint(self.checkpoint, arch=self.arch, conv=self.conv, conv_kwargs=dict(self.conv_kwargs),
                               trust_pickle=self.trust_pickle, model_class=self.model_class,
                               model_args=self.model_args)

    def input_paths(self) -> dict[str, Path | None]:
        """The files loading reads, labelled for the output-path guard."""
        return {"the input checkpoint": Path(self.checkpoint) if self.checkpoint is not None else None,
                "the `model_class` module": model_class_file(self.model_class)}

    @property
    def label(self) -> str:
        """What a report calls it: the checkpoint's path, or an in-memory module."""
        return str(self.checkpoint) if self.checkpoint is not None else "<in-memory module>"
