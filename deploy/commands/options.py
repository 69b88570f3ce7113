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

SHAPES, PARITY, GRAPH, ENGINE_GROUP, OUTPUT = "Shapes", "Parity", "Graph", "TensorRT engine", "Machine output"


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

ENGINE = typer.Option(None, "--engine", rich_help_panel=ENGINE_GROUP, help="Also build a TensorRT engine.plan (GPU + "
                      "TensorRT 10 or 11) and check it against ONNX Runtime; exit 5 where TensorRT is missing.")
FP16 = typer.Option(False, "--fp16", rich_help_panel=ENGINE_GROUP,
                    help="fp16 engine: TensorRT 10's fp16 kernels; on TensorRT 11 (strongly typed) an fp16 copy of "
                         "the ONNX, checked on ONNX Runtime first (exit 3 if it disagrees). Parity bound 1e-2 * "
                         "max|ref|, top-1 >= 99 % on the rows whose margin exceeds it.")
MIN_BATCH = typer.Option(None, "--min-batch", rich_help_panel=ENGINE_GROUP, help="Engine profile: smallest batch (default 1).")
OPT_BATCH = typer.Option(None, "--opt-batch", rich_help_panel=ENGINE_GROUP,
                         help="Engine profile: batch TensorRT tunes for (default: max).")
MAX_BATCH = typer.Option(None, "--max-batch", rich_help_panel=ENGINE_GROUP,
                         help="Engine profile: largest batch (default: opt, or 1).")
WORKSPACE = typer.Option(None, "--workspace", callback=finite, rich_help_panel=ENGINE_GROUP,
                         help="Builder workspace limit in GiB.")
TIMING_CACHE = typer.Option(None, "--timing-cache", rich_help_panel=ENGINE_GROUP,
                            help="Load/save tactic timings here (one from another GPU or TensorRT is reported and "
                                 "replaced).")

FOLD = typer.Option(True, "--fold/--no-fold", rich_help_panel=GRAPH,
                    help="Fold first: CoC/DO-Conv into convs, every module with fuse()/reparameterize()/"
                         "switch_to_deploy(), every Conv+BN pair.")
REWRITE = typer.Option(True, "--rewrite/--no-rewrite", rich_help_panel=GRAPH,
                       help="With --fold: the exact deploy rewrites too (SPConv/IC absorb the BN after them, SCNet's "
                            "static sizes; each proven in float64). --no-rewrite exports the folded graph without "
                            "them, to compare.")
REWRITE_DIFF = typer.Option(True, "--rewrite-diff/--no-rewrite-diff", rich_help_panel=GRAPH,
                            help="When a layer was rewritten, export the model once more without the rewrites to "
                                 "report what they changed (node counts; the export step runs twice).")
OPSET = typer.Option(None, "--opset", rich_help_panel=GRAPH,
                     help="ONNX opset: dynamo 18..23 (default 18), torchscript 9..20 (default 17); others exit 2.")
EXPORTER = typer.Option("dynamo", "--exporter", rich_help_panel=GRAPH,
                        help="dynamo (torch.export, opset 18) or torchscript (opset 17).")
SIMPLIFY = typer.Option(True, "--simplify/--no-simplify", rich_help_panel=GRAPH,
                        help="Run onnxsim (kept only if outputs still match; skipped with --no-fold, which keeps the "
                             "graph as exported).")
STRICT = typer.Option(True, "--strict/--no-strict", rich_help_panel=GRAPH,
                      help="Fail (exit 4) on graph-check findings; --no-strict writes the model and records them.")
STRICT_FOLD = typer.Option(False, "--strict-fold", rich_help_panel=GRAPH,
                           help="Fail (exit 4) when fold coverage finds foldable structure left in the graph (BatchNorm "
                                "after a conv, run-time conv weights, parallel branches summed); without it they are "
                                "a warning.")

DATA = typer.Option(None, "--data", rich_help_panel=PARITY,
                    help="Held-out images for the accuracy line: an image folder (one sub-folder per class), an .npz "
                         "with x and y, or digits (default: the checkpoint's own data set, when it names one).")
PREPROCESS = typer.Option(None, "--preprocess", metavar="RECIPE", rich_help_panel=GRAPH,
                          help="The preprocessing recipe to record in the ONNX metadata (over the checkpoint's): a "
                               "preset (imagenet, digits) and/or key=value pairs separated by ';' (resize, crop, "
                               "color, channels, scale, mean, std, interpolation).")

JSON = typer.Option(False, "--json", rich_help_panel=OUTPUT, help="Print the machine-readable record (JSON) on "
                    "stdout and nothing else there (human text goes to stderr).")
JSON_FILE = typer.Option(None, "--json-file", metavar="PATH", rich_help_panel=OUTPUT,
                         help="Write the machine-readable record (JSON) to PATH (atomically).")
