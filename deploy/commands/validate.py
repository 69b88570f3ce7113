"""`deploy validate`: the parity step of the export alone, on an ONNX file made earlier."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from deploy.commands.common import console, machine_output
from deploy.commands.options import ATOL, INPUT_SHAPE, INPUT_SIZE, JSON, RTOL, SAMPLES, SEED
from deploy.commands.printing import parity_table, print_accuracy
from deploy.commands.source_options import (
    ARCH,
    CONV,
    CONV_OPT,
    MODEL,
    MODEL_ARGS,
    MODEL_CLASS,
    RATIO,
    TRUST_PICKLE,
    model_source,
)
from deploy.core.errors import BadInputError
from deploy.pipeline.validate import run_validate
from validators.onnx_file import require_regular_file


def validate(
    model: Path = MODEL,
    onnx_file: Path = typer.Argument(..., metavar="MODEL.onnx", help="The exported ONNX model to check."),
    report: Optional[Path] = typer.Option(None, "--json-file", "--report", metavar="PATH",
                                          help="Write the report JSON here (atomically)."),
    as_json: bool = JSON,
    input_size: Optional[str] = INPUT_SIZE,
    input_shape: Optional[str] = INPUT_SHAPE,
    atol: Optional[float] = ATOL,
    rtol: Optional[float] = RTOL,
    samples: int = SAMPLES,
    seed: int = SEED,
    arch: Optional[str] = ARCH,
    conv: Optional[str] = CONV,
    conv_opt: Optional[list[str]] = CONV_OPT,
    ratio: Optional[float] = RATIO,
    model_class: Optional[str] = MODEL_CLASS,
    model_args: Optional[str] = MODEL_ARGS,
    trust_pickle: bool = TRUST_PICKLE,
) -> None:
    """Prove MODEL.onnx computes what MODEL.pt computes: training form vs folded vs ONNX Runtime.

    Every output is compared by name, at twice H and W too when the graph's H/W are dynamic; exit 3 if
    any differs. The report (--json, --json-file) is written in either case.
    """
    if not onnx_file.exists():
        raise BadInputError(f"{onnx_file}: no such ONNX file; export one with `deploy export`")
    require_regular_file(onnx_file)
    source = model_source(model, arch=arch, conv=conv, conv_opt=conv_opt, ratio=ratio, model_class=model_class,
                          model_args=model_args, trust_pickle=trust_pickle)
    with machine_output(as_json, None) as out:
        with console.status("checking parity …"):
            rep = run_validate(source, onnx_file, samples=samples, seed=seed, atol=atol, rtol=rtol,
                               input_size=input_size, input_shape=input_shape, report=report)
        console.print(parity_table(rep.parity))
        print_accuracy(rep.accuracy)
        if report is not None:
            console.print(f"wrote {report}", highlight=False, soft_wrap=True, markup=False)
        out.emit(rep.to_dict())
    rep.parity.raise_if_failed()
