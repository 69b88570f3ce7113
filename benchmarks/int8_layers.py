"""The papers' layers under INT8: digits-trained ResNet-20s with each conv kind, and a RepVGG-style network.

Each model is trained on the bundled digits (train split), exported folded (and without the fold),
quantized with `deploy quantize`'s TensorRT recipe calibrated on the train split, and scored against its
own fp32 export on the test split (359 images): top-1 of both with Wilson intervals, the paired
difference, top-1 agreement and the output SQNR. The gate is opened wide (``max_drop`` 100) so that every
row is measured, not refused. Writes ``docs/claims/int8.md``, a row at a time.

    .venv/bin/python benchmarks/int8_layers.py [--epochs 3] [--kinds plain,coc,doconv,ic,sp,repvgg]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import deploy
from deploy.core.environment import cpu_name
from deploy.core.errors import GraphCheckError
from deploy.layers.conv_bn import fuse_conv_bn_weights
from deploy.models.digits import load_digits
from deploy.models.train import train_classifier
from deploy.quantize.run import QuantizeOptions, run_quantize

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("plain", "coc", "doconv", "ic", "sp", "repvgg")


def conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class RepVGGBlock(nn.Module):
    """RepVGG's training-time block (Ding et al. 2021, Sec. 3.2): ReLU(BN(3x3 x) + BN(1x1 x) + BN(x)), merged
    into one 3x3 conv by ``reparameterize()`` (Sec. 3.3)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dense, self.one = conv_bn(cin, cout, 3, stride), conv_bn(cin, cout, 1, stride)
        self.identity = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None
        self.act, self.reparam = nn.ReLU(), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.act(self.reparam(x))
        out = self.dense(x) + self.one(x)
        return self.act(out + self.identity(x) if self.identity is not None else out)

    def reparameterize(self) -> None:
        conv = self.dense[0]
        weight, bias = fuse_conv_bn_weights(conv.weight, None, self.dense[1])
        w1, b1 = fuse_conv_bn_weights(self.one[0].weight, None, self.one[1])
        weight = weight + nn.functional.pad(w1, [1, 1, 1, 1])
        bias = bias + b1
        if self.identity is not None:
            eye = torch.zeros_like(weight)
            for c in range(weight.shape[0]):
                eye[c, c, 1, 1] = 1.0
            wi, bi = fuse_conv_bn_weights(eye, None, self.identity)
            weight, bias = weight + wi, bias + bi
        self.reparam = nn.Conv2d(conv.in_channels, conv.out_channels, 3, conv.stride, 1).to(weight.dtype)
        self.reparam.weight.data, self.reparam.bias.data = weight.detach(), bias.detach()
        del self.dense, self.one, self.identity
        self.identity = None


def repvgg_net(channels: int) -> nn.Module:
    widths = [16, 16, 32, 32, 64, 64]
    strides = [1, 1, 2, 1, 2, 1]
    blocks, cin = [], channels
    for w, s in zip(widths, strides):
        blocks.append(RepVGGBlock(cin, w, s))
        cin = w
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))


def _train_zoo(kind: str, epochs: int, out: Path) -> Path:
    ckpt = out / f"{kind}.pt"
    subprocess.run([str(Path(sys.executable).with_name("deploy")), "zoo", "train", "resnet20", "--conv", kind, "--data", "digits",
                    "--epochs", str(epochs), "-o", str(ckpt)], check=True, capture_output=True)
    return ckpt


def _train_repvgg(epochs: int) -> nn.Module:
    train, test = load_digits()
    model = repvgg_net(train.x.shape[1])
    train_classifier(model, train, test, epochs)
    return model.eval()


def _quantize(onnx_path: Path, unfolded: bool) -> dict:
    opts = QuantizeOptions(calib="digits:train", eval="digits:test", max_drop=100.0, allow_unfolded=unfolded)
    start = time.perf_counter()
    report = run_quantize(onnx_path, onnx_path.with_name(onnx_path.stem + ".int8.onnx"), opts)
    record = report.to_dict()
    record["wall_s"] = time.perf_counter() - start
    return record


def measure(kind: str, epochs: int, tmp: Path, out: Path) -> None:
    """Train ``kind``, export it folded and unfolded, quantize each; append each row to ``out`` as it is measured."""
    model: nn.Module | Path = _train_repvgg(epochs) if kind == "repvgg" else _train_zoo(kind, epochs, tmp)
    for fold in (True, False):
        form = "folded" if fold else "unfolded"
        path = tmp / f"{kind}.{form}.onnx"
        shape = {"input_shape": (model[0].dense[0].in_channels, 32, 32)} if isinstance(model, nn.Module) else {}
        try:
            deploy.export(model, output=path, fold=fold, samples=1, compare_rewrites=False, **shape)
        except GraphCheckError as exc:  # the unfolded CoC / DO-Conv: weights computed at run time
            line = f"| {kind} | {form} | not a deployable graph: {str(exc).split(':')[1].split('(')[0].strip()} |||||||"
        else:
            line = f"| {kind} | {form} {_cells(_quantize(path, unfolded=not fold))}"
        print(line, flush=True)
        with out.open("a") as f:
            f.write(line + "\n")


def _cells(r: dict) -> str:
    gate, fp32 = r["gate"], r["fp32_top1"]
    int8, diff = gate["int8_top1"], gate["comparison"]["difference"]
    agree = gate["comparison"]["agreement"]
    pct = lambda i: f"{100 * i['value']:.2f} [{100 * i['low']:.2f}, {100 * i['high']:.2f}]"  # noqa: E731
    return (f"| {pct(fp32)} | {pct(int8)} | {pct(diff)} | {pct(agree)} | {r['output_sqnr_db']['output']:.1f} | "
            f"{r['quantized_nodes']} | {r['sensitive'][0]['node'] if r['sensitive'] else '-'} |")


def header(epochs: int) -> str:
    return "\n".join([
        "# The papers' layers under INT8", "",
        f"Generated by `benchmarks/int8_layers.py` ({epochs} epochs) on {cpu_name()}: "
        "digits-trained ResNet-20 per conv kind and a RepVGG-style network, each exported folded and "
        "without the fold, quantized with the TensorRT recipe (symmetric int8, per-channel weights, MinMax "
        "calibration on the 1438 training images) and scored against its own fp32 export on the 359 test "
        "images. Intervals are 95 % (Wilson for accuracies and agreement, paired bootstrap for the "
        "difference); SQNR is of the logits.", "",
        "| model | form | fp32 top-1 % | INT8 top-1 % | INT8 - fp32 (points) | agreement % | logit SQNR dB "
        "| int8 nodes | most sensitive node |", "|---|---|---|---|---|---|---|---|---|", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--append", action="store_true", help="add rows to an existing table")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "claims" / "int8.md")
    args = parser.parse_args()
    if not args.append:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(header(args.epochs))
    with tempfile.TemporaryDirectory(prefix="int8-layers.") as tmp:
        for kind in args.kinds.split(","):
            measure(kind, args.epochs, Path(tmp), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
