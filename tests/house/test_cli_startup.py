"""The root CLI loads commands lazily: the ONNX-side commands never import torch; help and completion
read the command table.

Each start-up check runs the real `deploy` entry point in a fresh interpreter and reads
``sys.modules`` at exit (an ``atexit`` hook), so an import anywhere on the path — the CLI, a
command module, the library it calls — is caught.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy import cli
from tests.helpers import PORTABLE_IR

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import atexit, json, sys\n"
         "atexit.register(lambda: print('MODULES=' + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
         "('torch', 'deploy'))), file=sys.stderr))\n"
         "sys.argv = ['deploy'] + json.loads(sys.argv[1])\n"
         "from deploy.cli import main\n"
         "main()\n")


def _modules_after(*args: str | Path) -> tuple[int, list[str], str]:
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps([str(a) for a in args])], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    line = next(ln for ln in run.stderr.splitlines() if ln.startswith("MODULES="))
    return run.returncode, json.loads(line[len("MODULES="):]), run.stdout


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g", [x], [y],
                              initializer=[w])
    path = tmp_path_factory.mktemp("startup") / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=PORTABLE_IR), str(path))
    return path


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["inspect", "{onnx}"], ["inspect", "{onnx}", "--layers"],
                                  ["bench", "{onnx}", "--iters", "2", "--warmup", "1"], ["inspect", "--help"]],
                         ids=["version", "help", "inspect", "inspect-layers", "bench", "inspect-help"])
def test_onnx_side_never_imports_torch(small_onnx: Path, args: list[str]) -> None:
    code, modules, stdout = _modules_after(*[a.format(onnx=small_onnx) for a in args])
    assert code == 0
    assert not [m for m in modules if m.split(".")[0] == "torch"], "torch was imported"
    assert stdout.strip()  # the command did its job
    if args[0] in ("--version", "--help"):  # nothing but the root: no command module at all
        assert not [m for m in modules if m.startswith("deploy.commands.") and m != "deploy.commands.common"]


def test_a_torch_side_command_loads_torch_on_demand(small_onnx: Path) -> None:
    """The check above can fail: `zoo list` imports the registry (and torch) when it runs."""
    code, modules, _ = _modules_after("zoo", "list", "--arch", "resnet20", "--json")
    assert code == 0 and "torch" in modules and "deploy.commands.zoo" in modules


def test_table_summaries_are_the_commands_docstrings() -> None:
    """`deploy --help` shows the table's line; it must be each command's own first docstring line."""
    for name in cli.COMMANDS:
        command = cli.load_command(name)
        doc = command.callback.__doc__ if command.callback and command.callback.__doc__ else command.help
        first = (doc or "").strip().splitlines()[0].strip()
        assert cli.COMMANDS[name].summary == first, name


def test_command_help_paragraphs_are_unwrapped() -> None:
    """typer's rich help keeps the docstring's line breaks after the first paragraph; ours are joined."""
    for name in cli.COMMANDS:
        command = cli.load_command(name)
        for cmd in [command, *getattr(command, "commands", {}).values()]:
            paragraphs = (cmd.help or "").split("\n\n")
            assert all("\n" not in p for p in paragraphs), (name, cmd.name)
    multi = cli.load_command("inspect").help.split("\n\n")
    assert len(multi) >= 2 and "MACs from ONNX shape inference" in multi[1]


def test_help_lists_every_command_and_unknown_commands_fail() -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    shown = runner.invoke(cli.app, ["--help"])
    assert shown.exit_code == 0
    for name in cli.COMMANDS:
        assert name in shown.stdout
    wrong = runner.invoke(cli.app, ["inspekt"])
    assert wrong.exit_code == 2 and "No such command 'inspekt'" in wrong.stderr


def _complete(words: str) -> list[str]:
    env = {**os.environ, "_DEPLOY_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split(" ")) - 1)}
    run = subprocess.run([str(Path(sys.executable).parent / "deploy")], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert run.returncode == 0 and "Usage" not in run.stdout, run.stdout + run.stderr
    return run.stdout.split()


def test_shell_completion_through_the_lazy_group() -> None:
    """Bash completion of command names (from the table) and of a lazily loaded command's options."""
    assert _complete("deploy ") == list(cli.COMMANDS) and _complete("deploy c") == ["claims"]
    assert "--layers" in _complete("deploy inspect --l")
    assert {"list", "create", "train"} <= set(_complete("deploy zoo "))
    assert "--json-file" in _complete("deploy bench --json")


def test_bench_json_rule(small_onnx: Path, tmp_path: Path) -> None:
    """bench --json: the record alone on stdout (table and progress on stderr); --json-file: the same
    record in a file; the old `--json FILE` form is refused by click (a path is not a command)."""
    from typer.testing import CliRunner

    runner = CliRunner()
    args = ["bench", str(small_onnx), "--iters", "3", "--warmup", "1", "--input-size", "16"]
    printed = runner.invoke(cli.app, [*args, "--json"])
    assert printed.exit_code == 0, printed.stderr
    record = json.loads(printed.stdout)
    assert record["format"] == "convdeploy-bench/1" and len(record["results"][0]["stats"]["samples_ms"]) == 3
    assert "median" in printed.stderr
    target = tmp_path / "b.json"
    written = runner.invoke(cli.app, [*args, "--json-file", str(target)])
    assert written.exit_code == 0 and "median" in written.stdout
    assert json.loads(target.read_text())["results"][0]["input_shape"] == [1, 3, 16, 16]
    old = runner.invoke(cli.app, [*args, "--json", str(tmp_path / "old.json")])
    assert old.exit_code == 2 and not (tmp_path / "old.json").exists()
    assert runner.invoke(cli.app, ["-v", "-q", "--version"]).exit_code == 0  # --version is eager


def test_quiet_keeps_errors(small_onnx: Path) -> None:
    from typer.testing import CliRunner

    run = CliRunner().invoke(cli.app, ["-q", "bench", str(small_onnx), "--iters", "2", "--duration", "1"])
    assert run.exit_code == 2 and run.stdout == "" and "give --iters or --duration, not both" in run.stderr


def test_quiet_silences_progress_bars_too(small_onnx: Path, tmp_path: Path) -> None:
    """`deploy -q bench … --json-file F` prints nothing on stdout (the harness's progress bar included)."""
    run = subprocess.run([str(Path(sys.executable).parent / "deploy"), "-q", "bench", str(small_onnx), "--iters", "3",
                          "--warmup", "1", "--input-size", "16", "--json-file", str(tmp_path / "q.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and json.loads((tmp_path / "q.json").read_text())["format"] == "convdeploy-bench/1"


def test_root_options_last_one_invocation(small_onnx: Path) -> None:
    """`-q` of one invocation does not silence the next (in-process runners share the consoles)."""
    from typer.testing import CliRunner

    from deploy.commands.common import console, state

    runner = CliRunner()
    assert runner.invoke(cli.app, ["-q", "inspect", str(small_onnx)]).stdout == ""
    assert not console.quiet and not state["quiet"]
    assert "graph check" in runner.invoke(cli.app, ["inspect", str(small_onnx)]).stdout
