"""`deploy inspect FILE`: what a .onnx model or a .pt checkpoint holds.

An ONNX file is read bounded (``validators.onnx_file``): anything but a regular file is refused
before a byte is read, negative dimensions and weights declared without their data exit 2, and
the graph is never run — params come from the initializers, MACs from ONNX shape inference — so
a file declaring a 100000x100000 input costs what its bytes cost. This module imports no torch
(``deploy inspect x.onnx`` starts fast); a checkpoint's inspection, which needs torch, is
imported only when a .pt is inspected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import onnx
import typer
from rich.table import Table

from deploy.commands.common import console, machine_output, warn
from deploy.commands.options import JSON, JSON_FILE
from deploy.commands.printing import print_fold_coverage, print_graph
from deploy.core.errors import BadInputError
from validators.fold_coverage import FoldCoverageReport, check_fold_coverage
from validators.graph import GraphReport, check_graph
from validators.onnx_file import check_declarations, check_structure, load_onnx, require_regular_file
from validators.onnx_summary import LayerRow, TensorInfo, interface, layer_rows, shape_text

# ---------------------------------------------------------------- ONNX


def _tensor_dict(t: TensorInfo) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "shape": t.shape}


def inspect_onnx(path: Path, model: onnx.ModelProto, layers: bool) -> tuple[dict[str, Any], GraphReport,
                                                                              FoldCoverageReport, list[LayerRow]]:
    """The record of ``deploy inspect --json`` for a parsed, declaration-checked ONNX model."""
    graph = check_graph(model, run_budget=None)  # an untrusted graph is never run
    coverage = check_fold_coverage(model)
    inputs, outputs = interface(model)
    rows = layer_rows(model) if layers else []
    record = {
        "file": str(path),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_tensor_dict(t) for t in inputs],
        "outputs": [_tensor_dict(t) for t in outputs],
        "metadata": {p.key: p.value for p in model.metadata_props},
        **graph.to_dict(),
        "fold_coverage": coverage.to_dict(),
    }
    if layers:
        record["layers"] = [r.to_dict() for r in rows]
    return record, graph, coverage, rows


def _print_layers(rows: list[LayerRow]) -> None:
    """polygraphy's ``--show layers attrs weights`` layout: a header line per node, then its tensors."""
    console.print(f"layers ({len(rows)}):", highlight=False)
    for i, row in enumerate(rows):
        lines = [f"[{i}] {row.op} {row.name}" + (f" ({row.precision})" if row.precision else "")]
        data = [t.text() for t in row.inputs if t.name not in row.weights]
        lines.append(f"    in:    {', '.join(data) or '-'}")
        if row.weights:
            lines.append("    w:     " + ", ".join(f"{n} {shape_text(list(s))}" for n, s in row.weights.items()))
        lines.append(f"    out:   {', '.join(t.text() for t in row.outputs) or '-'}")
        if row.attributes:
            lines.append("    attrs: " + ", ".join(f"{k}={v}" for k, v in row.attributes.items()))
        for line in lines:
            console.print(line, highlight=False, markup=False, soft_wrap=True)


def _print_onnx(record: dict[str, Any], graph: GraphReport, coverage: FoldCoverageReport,
                rows: list[LayerRow]) -> None:
    console.print(f"{record['file']} ({record['producer'] or 'unknown producer'})", highlight=False, markup=False,
                  soft_wrap=True)
    for label in ("inputs", "outputs"):
        for t in record[label]:
            console.print(f"  {label[:-1]:<7}{t['name']}  {t['dtype']}  {shape_text(t['shape'])}", highlight=False,
                          markup=False)
    for key, value in record["metadata"].items():
        console.print(f"  meta   {key} = {value}", highlight=False, soft_wrap=True, markup=False)
    print_graph(graph, coverage)
    print_fold_coverage(coverage, strict_fold=False)
    if rows:
        _print_layers(rows)


# ---------------------------------------------------------------- checkpoints (torch)


def _inspect_checkpoint(path: Path, trust_pickle: bool) -> dict[str, Any]:
    require_regular_file(path)  # torch.load on a FIFO would block
    from deploy.commands.inspect_checkpoint import checkpoint_record  # noqa: PLC0415 - torch: only a .pt needs it

    return checkpoint_record(path, trust_pickle)


def inspect(
    file: Path = typer.Argument(..., help="A .onnx model or a .pt checkpoint."),
    layers: bool = typer.Option(False, "--layers", help="ONNX: one row per node: op, inputs and outputs with the "
                                "shapes and dtypes of ONNX shape inference, attributes, weight shapes."),
    as_json: bool = JSON,
    json_file: Optional[Path] = JSON_FILE,
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow a pickled whole module (runs code)."),
) -> None:
    """What a file holds: .onnx interface, dtypes, ops, params, MACs, verdict (--layers: every node); .pt arch, conv, params.

    An ONNX graph is never run: params come from its initializers and MACs from ONNX shape
    inference; a FIFO or device, a negative dimension, weights declared without their data and a
    graph the ONNX checker calls malformed (a cycle, a name produced twice, an IR version it cannot
    read) exit 2.
    """
    with machine_output(as_json, json_file, reads={"the inspected file": file}) as out:
        if file.suffix.lower() == ".onnx":
            model = load_onnx(file)
            check_declarations(model, file)
            check_structure(model, file)
            record, graph, coverage, rows = inspect_onnx(file, model, layers)
            out.emit(record)
            if not as_json:
                _print_onnx(record, graph, coverage, rows)
            return
        if layers:
            raise BadInputError(f"--layers lists the nodes of an ONNX graph; {file.name} is not a .onnx file")
        if trust_pickle:
            warn("--trust-pickle: a pickled module runs code from the file while it loads; use it only for files "
                 "you trust")
        info = _inspect_checkpoint(file, trust_pickle)
        out.emit(info)
        if not as_json:
            table = Table(show_header=False, title=str(file))
            for key, value in info.items():
                if value not in (None, [], {}):
                    table.add_row(key, str(value))
            console.print(table, markup=False)
