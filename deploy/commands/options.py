"""The command-line options shared by several commands, one group per concern (torch-free).

Shapes, parity, engine and machine output; each option is declared once here and means the
same wherever it appears (``--input-size`` is ``H`` or ``HxW`` everywhere, ``--batch`` one batch
size), and ``--help`` shows each group under its own heading. The model-source group, which
reads the conv-kind registry (torch), is in ``deploy.commands.source_options``.
"""

from __future__ import annotations

from typing import Optional

import typer

from deploy.commands.common import finite, warn

SHAPES, PARITY, ENGINE, OUTPUT = "Shapes", "Parity", "TensorRT engine", "Machine output"


def batch_size(value: Optional[str]) -> Optional[str]:
    """``--batch N`` (checked by the library); ``dynamic``, the old spelling of no fixed batch, still works
    for one release, with a warning."""
    if value is not None and value.strip().lower() == "dynamic":
        warn("--batch dynamic is deprecated (a dynamic batch axis is the default): drop it")
        return None
    return value


INPUT_SIZE = typer.Option(None, "--input-size", metavar="H|HxW", rich_help_panel=SHAPES,
                          help="Input height and width, e.g. 224 or 64x48 (default: the model's).")
INPUT_SHAPE = typer.Option(None, "--input-shape", metavar="CxHxW", rich_help_panel=SHAPES,
                           help="The whole input shape, e.g. 3x64x48 (for models that do not record it).")
DYNAMIC = typer.Option(None, "--dynamic", metavar="batch|hw|batch,hw", rich_help_panel=SHAPES,
                       help="Symbolic axes of the ONNX input (default batch; hw: height and width, then parity also "
                            "runs at twice H and W).")
BATCH = typer.Option(1, "--batch", min=1, metavar="N", rich_help_panel=SHAPES, help="Images per batch.")
EXPORT_BATCH = typer.Option(None, "--batch", metavar="N", callback=batch_size, rich_help_panel=SHAPES,
                            help="Fix the batch axis at N (default: a dynamic batch axis named 'batch').")

ATOL = typer.Option(None, "--atol", callback=finite, rich_help_panel=PARITY,
                    help="Absolute part of the parity bound (default 0).")
RTOL = typer.Option(None, "--rtol", callback=finite, rich_help_panel=PARITY,
                    help="Bound relative to max|ref| (default 1e-4).")
SAMPLES = typer.Option(8, "--samples", rich_help_panel=PARITY, help="Seeded random inputs per batch size.")
SEED = typer.Option(0, "--seed", rich_help_panel=PARITY, help="Seed of the parity inputs and the fold probe.")

FP16 = typer.Option(False, "--fp16", rich_help_panel=ENGINE,
                    help="fp16 engine: TensorRT 10's fp16 kernels; on TensorRT 11 (strongly typed) an fp16 copy of "
                         "the ONNX, checked on ONNX Runtime first (exit 3 if it disagrees). Parity bound 1e-2 * "
                         "max|ref|, top-1 >= 99 % on the rows whose margin exceeds it.")
MIN_BATCH = typer.Option(None, "--min-batch", rich_help_panel=ENGINE, help="Engine profile: smallest batch (default 1).")
OPT_BATCH = typer.Option(None, "--opt-batch", rich_help_panel=ENGINE,
                         help="Engine profile: batch TensorRT tunes for (default: max).")
MAX_BATCH = typer.Option(None, "--max-batch", rich_help_panel=ENGINE,
                         help="Engine profile: largest batch (default: opt, or 1).")
WORKSPACE = typer.Option(None, "--workspace", callback=finite, rich_help_panel=ENGINE,
                         help="Builder workspace limit in GiB.")
TIMING_CACHE = typer.Option(None, "--timing-cache", rich_help_panel=ENGINE,
                            help="Load/save tactic timings here (one from another GPU or TensorRT is reported and "
                                 "replaced).")

JSON = typer.Option(False, "--json", rich_help_panel=OUTPUT, help="Print the machine-readable record (JSON) on "
                    "stdout and nothing else there (human text goes to stderr).")
JSON_FILE = typer.Option(None, "--json-file", metavar="PATH", rich_help_panel=OUTPUT,
                         help="Write the machine-readable record (JSON) to PATH (atomically).")
