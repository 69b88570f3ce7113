"""Hypothesis-driven fuzzing of the command line and of input files: whatever a careless or
hostile user gives, the exit code is never 1 (a bug), no traceback is shown without --debug,
a failed run leaves no new file and no run changes its inputs.

Each test runs ``FUZZ_EXAMPLES`` cases in `make test`; the `slow` soak runs many more
(``pytest -m slow tests/robustness/test_robustness_fuzz.py``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = 30
SOAK_EXAMPLES = 2000
FAST = ["--exporter", "torchscript", "--no-simplify", "--samples", "1", "--no-rewrite-diff"]
COMMON = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: values each option must refuse (exit 2): malformed, out of range, not finite, or a path that is an input
BAD: dict[str, dict[str, list[str]]] = {
    "export": {
        "--seed": ["-1", "4294967296", "x", "1.5", "", "nan"],
        "--batch": ["0", "-3", "1000000000", "x", "1.5", ""],
        "--input-size": ["0", "-1", "5000", "x", "3x", "32x32x32", "", "1e9"],
        "--input-shape": ["3x32", "0x32x32", "100000x4000x4000", "x", "-3x32x32", ""],
        "--opset": ["5", "99", "-1", "x", "0", "21"],
        "--atol": ["nan", "inf", "-inf", "-1", "x", ""],
        "--rtol": ["nan", "inf", "-1", "1e999"],
        "--samples": ["0", "-1", "x", "1000000"],
        "--dynamic": ["x", "none,batch", "hw,q", "batch,none"],
        "--exporter": ["tflite", "", "DYNAMO"],
        "--report": ["m.pt", ".", "missing/r.json", "o.onnx", "./m.pt"],
        "-o": ["m.pt", "m.txt", ".", "missing/o.onnx", "m.pt/o.onnx"],
    },
    "validate": {
        "--seed": ["-1", "x", "4294967296"],
        "--atol": ["nan", "-inf", "-1"],
        "--rtol": ["inf", "-1", "x"],
        "--input-size": ["64", "5000", "0", "x"],
        "--input-shape": ["1x32x32", "3x64x64", "3x32"],
        "--samples": ["0", "-5"],
        "--report": ["m.pt", "m.onnx", ".", "missing/r.json"],
        "--arch": ["nope", "resnet18"],
        "--conv": ["nope"],
    },
    "bench": {
        "--batch": ["0", "-1", "100000000", "x"],
        "--input-size": ["0", "5000", "64", "x"],
        "--warmup": ["-1", "x", "nans", "infs", "1e999s", ""],
        "--iters": ["0", "-1", "x"],
        "--duration": ["nan", "inf", "0", "-1", "x"],
        "--threads": ["0", "-1", "x"],
        "--provider": ["gpu", ""],
        "--seed": ["-1", "x"],
        "--json-file": ["m.onnx", ".", "missing/x.json"],
        "--vs": ["nope.onnx", "m.txt"],
        "--backend": ["trt", "x", "torch"],
        "--device": ["gpu", "cuda"],
        "--dtype": ["fp8", "fp16"],
    },
}
#: cheap valid values the fuzzer mixes in
GOOD: dict[str, dict[str, list[str]]] = {
    "export": {"--seed": ["0", "7"], "--atol": ["0", "1e-3"], "--rtol": ["1e-4", "0.01"], "--batch": ["dynamic"]},
    "validate": {"--seed": ["0", "3"], "--atol": ["1e-3"], "--rtol": ["1e-3"], "--input-size": ["32"]},
    "bench": {"--seed": ["0", "5"], "--threads": ["1"], "--warmup": ["0", "1"], "--iters": ["2"]},
}
BASE = {"export": ["export", "m.pt", "-o", "o.onnx", *FAST], "validate": ["validate", "m.pt", "m.onnx", "--samples", "1"],
        "bench": ["bench", "m.onnx", "--iters", "3", "--warmup", "0"]}


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def workdir(model_files, monkeypatch):
    """``model_files``, a text file and a small torch.export archive m.pt2, in the current directory."""
    import torch
    from torch import nn

    tmp_path = model_files
    (tmp_path / "m.txt").write_text("not a model\n")
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    small(torch.randn(1, 3, 8, 8))
    torch.export.save(torch.export.export(small.eval(), (torch.randn(1, 3, 8, 8),)), tmp_path / "m.pt2")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def check_run(deploy_cli, root: Path, args: list[str], allowed: set[int]) -> int:
    """Run ``deploy ARGS``; the exit code must be in ``allowed`` (never 1), no traceback, inputs
    unchanged, and nothing new on disk unless the run succeeded (its outputs are then removed)."""
    before = _tree(root)
    run = deploy_cli(*args)
    after = _tree(root)
    shown = run.stdout + run.stderr
    assert run.exit_code != 1 and run.exit_code in allowed, (args, shown)
    assert "Traceback" not in shown, (args, shown)
    assert {k: after.get(k) for k in before} == before, args  # no input was changed or removed
    new = set(after) - set(before)
    if run.exit_code != 0:
        assert not new, (args, new)
    for name in new:
        os.unlink(root / name)
    return run.exit_code


@st.composite
def bad_arguments(draw, command: str) -> list[str]:
    """The command's base arguments, one option with a value it must refuse, up to two valid ones."""
    bad_option = draw(st.sampled_from(sorted(BAD[command])))
    bad_value = draw(st.sampled_from(BAD[command][bad_option]))
    others = draw(st.lists(st.sampled_from(sorted(set(GOOD[command]) - {bad_option})), max_size=2, unique=True))
    extra = [x for opt in others for x in (opt, draw(st.sampled_from(GOOD[command][opt])))]
    return BASE[command] + extra + [bad_option, bad_value]


@pytest.mark.parametrize("command", ["export", "validate", "bench"])
@settings(COMMON, max_examples=FUZZ_EXAMPLES)
@given(data=st.data())
def test_every_refused_value_exits_2(workdir, deploy_cli, command, data):
    allowed = {2, 5} if command == "bench" else {2}  # --device cuda without a GPU is 5
    check_run(deploy_cli, workdir, data.draw(bad_arguments(command)), allowed)


#: random option text: digits, signs, separators and the letters of nan/inf/dynamic
_TEXT = st.text(alphabet="0123456789-+.xeEinfaty ", max_size=7)
#: the options random text goes to: those whose valid values are all cheap (the sizes, batches,
#: sample and thread counts a random string can make valid would be long runs; their bad values
#: are fuzzed above, paths too)
RANDOM_TEXT_OPTIONS = {"export": ["--atol", "--dynamic", "--exporter", "--opset", "--rtol", "--seed"],
                       "bench": ["--input-size", "--provider", "--seed", "--backend", "--dtype"]}


@pytest.mark.parametrize("command", ["export", "bench"])
@settings(COMMON, max_examples=FUZZ_EXAMPLES)
@given(data=st.data())
def test_random_option_text_never_crashes(workdir, deploy_cli, command, data):
    options = RANDOM_TEXT_OPTIONS[command]
    picked = data.draw(st.lists(st.sampled_from(options), min_size=1, max_size=2, unique=True))
    args = BASE[command] + [x for opt in picked for x in (opt, data.draw(_TEXT))]
    check_run(deploy_cli, workdir, args, {0, 2, 3, 4, 5})


# ---------------------------------------------------------------- corrupted files


@st.composite
def corrupted(draw, data: bytes, other: bytes) -> bytes:
    """``data`` truncated, bit-flipped, with junk appended, or given another format's header."""
    kind = draw(st.sampled_from(["truncate", "flip", "append", "other-format", "header"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    if kind == "other-format":
        return draw(st.sampled_from([other, b"{\"format\": \"convdeploy/1\"}\n", b"", b"PK\x03\x04" + data[4:200],
                                     b"\x80\x04" + data[2:300], b"\x08\x07\x12\x05"]))
    head = draw(st.binary(min_size=1, max_size=16))
    return head + data[len(head):]


def _fuzz_file(deploy_cli, root: Path, data, name: str, commands: list[list[str]], allowed: set[int]) -> None:
    source = (root / name).read_bytes()
    other = (root / ("m.onnx" if name.startswith("m.pt") else "m.pt")).read_bytes()
    suffix = Path(name).suffix
    bad = root / f"bad{suffix}"
    bad.write_bytes(data.draw(corrupted(source, other)))
    try:
        for args in commands:
            check_run(deploy_cli, root, args, allowed)
    finally:
        bad.unlink()


@settings(COMMON, max_examples=FUZZ_EXAMPLES)
@given(data=st.data())
def test_corrupted_checkpoints_are_refused_or_checked(workdir, deploy_cli, data):
    _fuzz_file(deploy_cli, workdir, data, "m.pt", [["validate", "bad.pt", "m.onnx", "--samples", "1"]], {0, 2, 3})


@settings(COMMON, max_examples=FUZZ_EXAMPLES)
@given(data=st.data())
def test_corrupted_onnx_files_are_refused_or_checked(workdir, deploy_cli, data):
    _fuzz_file(deploy_cli, workdir, data, "m.onnx", [["validate", "m.pt", "bad.onnx", "--samples", "1"],
                                                     ["bench", "bad.onnx", "--iters", "2", "--warmup", "0"]],
               {0, 2, 3, 4})


@settings(COMMON, max_examples=FUZZ_EXAMPLES)
@given(data=st.data())
def test_corrupted_pt2_archives_are_refused_or_checked(workdir, deploy_cli, data):
    _fuzz_file(deploy_cli, workdir, data, "m.pt2", [["inspect", "bad.pt2"],
                                                    ["export", "bad.pt2", "-o", "o.onnx", *FAST]], {0, 2})


#: values a conv option could be given: in range, at the edges, far out, not finite, not numbers
_OPTION_VALUES = st.one_of(st.integers(-10**9, 10**9).map(str), st.floats(allow_nan=True).map(repr),
                           st.sampled_from(["1e308", "-1e308", "nan", "inf", "0", "1", "2", "true", "none", "x", ""]))


@settings(COMMON, max_examples=FUZZ_EXAMPLES)
@given(data=st.data())
def test_conv_option_values_are_bounded(workdir, deploy_cli, data):
    """Whatever value a conv option gets, `zoo create` writes a finite checkpoint or exits 2 with one line,
    before any large allocation (no OOM kill)."""
    from deploy.layers.registry import conv_kinds

    kind = data.draw(st.sampled_from([k for k in conv_kinds() if k.options and "resnet20" not in k.zoo_names]))
    if "block3x3" not in kind.roles:
        return  # the SC kind replaces bottlenecks: no ResNet-20 to build
    option = data.draw(st.sampled_from(kind.options))
    args = ["zoo", "create", "resnet20", "--conv", kind.name, "--conv-opt", f"{option.name}={data.draw(_OPTION_VALUES)}",
            "-o", "sub/z.pt"]
    (workdir / "sub").mkdir(exist_ok=True)
    run = deploy_cli(*args)
    assert run.exit_code in (0, 2) and "Traceback" not in run.stdout + run.stderr, (args, run.stderr)
    written = workdir / "sub" / "z.pt"
    if run.exit_code == 0:
        from deploy.load.checkpoint import load_checkpoint

        load_checkpoint(written)  # refuses NaN/inf weights (exit 2) and options outside their bounds
        written.unlink()
    else:
        run.one_error_line()
        assert not written.exists()


@pytest.mark.slow
@settings(COMMON, max_examples=SOAK_EXAMPLES)
@given(data=st.data())
def test_soak_corrupted_files_and_arguments(workdir, deploy_cli, data):
    """The long soak: many more corruptions and refused values."""
    if data.draw(st.booleans()):
        name = data.draw(st.sampled_from(["m.pt", "m.onnx"]))
        command = (["validate", "bad.pt", "m.onnx", "--samples", "1"] if name == "m.pt"
                   else ["bench", "bad.onnx", "--iters", "2", "--warmup", "0"])
        _fuzz_file(deploy_cli, workdir, data, name, [command], {0, 2, 3, 4})
    else:
        command = data.draw(st.sampled_from(sorted(BAD)))
        check_run(deploy_cli, workdir, data.draw(bad_arguments(command)), {2, 5})
