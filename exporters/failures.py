"""What an exporter's failure means for the user: which module, which operator or line, what to do.

The exporters fail in their own words (a page of torch.export advice, a ``ConversionError``
three causes deep). The two failures a working model meets are told apart here:

* **data-dependent control flow**: a Python ``if``, loop or ``int()`` on tensor values
  (``GuardOnDataDependentSymNode`` and its kin); the module is the ``self`` of the innermost
  frame of the user's code in the traceback, the line is that frame's;
* **an operator the exporter cannot convert** (no ONNX function for an ATen operator, or one
  that refuses its arguments); the module is read from ``nn_module_stack`` of the node of that
  name in the model's ``torch.export`` program (exported again, only on this path).

Anything else keeps the exporter's first line with the generic hint.
"""

from __future__ import annotations

import linecache
import re
import traceback
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from deploy.core.errors import first_line

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SKIPPED = (str(Path(torch.__file__).resolve().parent),
            *(str(Path(__file__).resolve().parents[1] / d) for d in ("deploy", "exporters", "validators")))
_DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "data-dependent expression", "Data-dependent",
                   "data dependent", "Dynamic control flow")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _text(exc: BaseException) -> str:
    return _ANSI.sub("", f"{type(exc).__name__}: {exc}")


def _named(model: nn.Module, module: nn.Module) -> str:
    """```body.3` (Block)`` for a submodule, ``the model's own forward (Net)`` for the root."""
    qualname = next((n for n, m in model.named_modules() if m is module), None)
    if qualname is None:
        return f"a {type(module).__name__}"
    if qualname == "":
        return f"the model's own forward ({type(module).__name__})"
    return f"`{qualname}` ({type(module).__name__})"


def _user_frame(exc: BaseException) -> tuple[nn.Module, str] | None:
    """(the module whose code it is, ``file:line: code``) of the innermost traceback frame of a module's
    method outside torch and convdeploy."""
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        owner = frame.f_locals.get("self")
        if filename.startswith(_SKIPPED) or not isinstance(owner, nn.Module):
            continue
        code = linecache.getline(filename, lineno).strip()
        found = (owner, f"{Path(filename).name}:{lineno}" + (f": `{code}`" if code else ""))
    return found


def _control_flow(model: nn.Module, chain: list[BaseException], exporter: str) -> str | None:
    texts = [_text(e) for e in chain]
    if not any(marker in t for t in texts for marker in _DATA_DEPENDENT):
        return None
    located = next((f for f in (_user_frame(e) for e in reversed(chain)) if f is not None), None)
    reason = first_line(next(e for e, t in zip(reversed(chain), reversed(texts)) if any(m in t for m in _DATA_DEPENDENT)),
                        160)
    where = _named(model, located[0]) if located else "the model"
    line = f", {located[1]}" if located else ""
    return (f"data-dependent control flow in {where}{line} ({_ANSI.sub('', reason)}): an ONNX graph is one static "
            "program, so Python `if`, loops or int() on tensor values cannot be exported; compute both branches "
            "and select with torch.where (or torch.cond), or export the branch you deploy")


def _operator(model: nn.Module, x: torch.Tensor, chain: list[BaseException], exporter: str) -> str | None:
    text = "\n".join(_text(e) for e in chain)
    node = re.search(r"Error when translating node %(\w+) : .*?target=(?:torch\.ops\.)?([\w.]+?)(?:\.default)?\]", text)
    script = re.search(r"Exporting the operator '([\w:.]+)' to ONNX opset version (\d+) is not supported", text)
    if node is None and script is None:
        return None
    op = node.group(2) if node else script.group(1)  # type: ignore[union-attr]  # one of them matched
    where = _module_of_node(model, x, node.group(1)) if node else "the model"
    innermost = _ANSI.sub("", first_line(chain[-1], 200))
    return (f"the {exporter} exporter cannot convert {op} in {where} ({innermost}): replace it with operators ONNX "
            "has, or move it out of the exported model (into pre- or post-processing)")


def _module_of_node(model: nn.Module, x: torch.Tensor, node_name: str) -> str:
    """The module that called the node named ``node_name`` in the model's (decomposed) export program."""
    try:
        program = torch.export.export(model, (x,), strict=False)
        graphs = [program.run_decompositions().graph, program.graph]
    except Exception:  # noqa: BLE001 - the program may not even export again: say "the model"
        return "the model"
    for graph in graphs:
        for node in graph.nodes:
            stack = node.meta.get("nn_module_stack") if node.name == node_name else None
            if stack:
                qualname = re.sub(r"^L\['self'\]\.?", "", str(list(stack.values())[-1][0]))
                try:
                    return _named(model, model.get_submodule(qualname))
                except AttributeError:
                    return f"`{qualname}`"
    return "the model"


def explain_export_failure(model: nn.Module, x: torch.Tensor, exc: BaseException, exporter: str, hint: str) -> str:
    """The one line a failed export becomes (module docstring); ``hint`` ends the generic line."""
    chain = list(_chain(exc))
    explained = _control_flow(model, chain, exporter) or _operator(model, x, chain, exporter)
    if explained:
        return explained
    return f"{exporter} export failed ({_ANSI.sub('', first_line(exc))}): {hint}"
