"""Every `deploy …` command line the documentation shows names a real command and only options that
command takes (README.md, CONTRIBUTING.md and docs/*.md; the CHANGELOG keeps old spellings on
purpose, and docs/claims/ is a generated report).

Lines are read from fenced blocks (``$ deploy …`` or ``deploy …``, with their continuation lines)
and from inline code spans in the prose; the options are checked against the click command the
CLI builds, so an option renamed in the code and not in the docs fails here."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pytest
import typer

from deploy import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])
_FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"(?<!`)`(deploy\s[^`]+)`(?!`)")
_SHELL_END = re.compile(r"\s(?:&&|;|\|(?=\s*[a-z])|2>&1|#\s)")
_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][A-Za-z0-9-]*)")


def _fenced_commands(block: str) -> Iterator[str]:
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line.startswith("deploy "):
            i += 1
            continue
        command = line
        while command.endswith("\\") or (i + 1 < len(lines) and re.match(r"\s+[\[-]", lines[i + 1])):
            i += 1
            if i >= len(lines):
                break
            command = command.rstrip("\\").rstrip() + " " + lines[i].strip()
        yield command
        i += 1


def documented_commands(text: str) -> Iterator[str]:
    """Every ``deploy …`` command line of a Markdown page, as one line of text."""
    for block in _FENCE.findall(text):
        yield from _fenced_commands(block)
    prose = _FENCE.sub("", text)
    for span in _INLINE.findall(prose):
        yield " ".join(span.replace("\\|", "|").split())


@lru_cache(maxsize=None)
def _command(path: tuple[str, ...]) -> Any:
    if not path:
        return typer.main.get_command(cli.app)
    command = cli.load_command(path[0])
    for name in path[1:]:
        command = command.commands[name]
    return command


def _options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(getattr(param, "opts", ()))
        names.update(getattr(param, "secondary_opts", ()))
    return names


def check(line: str) -> list[str]:
    """What is wrong with one documented command line (nothing: an empty list)."""
    text = _SHELL_END.split(line, maxsplit=1)[0]
    words = [w for w in text.split()[1:] if "<TAB>" not in w]  # completion examples type a prefix
    root = []
    while words and words[0].startswith("-"):
        root.append(words.pop(0))
    problems = [f"root option {o}" for o in root if o not in _options(_command(()))]
    if not words or not re.fullmatch(r"[a-z]+", words[0]):
        return problems  # `deploy …`, `deploy --version`: no command named
    path: tuple[str, ...] = (words.pop(0),)
    if path[0] not in cli.COMMANDS:
        return problems + [f"no command {path[0]!r}"]
    group = _command(path)
    if getattr(group, "commands", None) and words and re.fullmatch(r"[a-z]+", words[0]):
        if words[0] not in group.commands:
            return problems + [f"no command {path[0]} {words[0]!r}"]
        path += (words.pop(0),)
    known = _options(_command(path))
    used = _OPTION.findall(" ".join(words))
    return problems + [f"{' '.join(path)} has no option {o}" for o in used if o not in known]


def test_check_finds_unknown_options_and_commands() -> None:
    assert check("deploy export m.pt --fold/--no-fold [--input-size HxW] -o x.onnx") == []
    assert check("deploy -q bench r50.onnx --iters 20 --json-file r.json && jq .x r.json") == []
    assert check("deploy zoo list [--convention conv|thop]") == []
    assert check("deploy bench m.onnx --no-such-option") == ["bench has no option --no-such-option"]
    assert check("deploy zoo create resnet20 --ratio 0.5 --epochs 3 -o m.pt") == ["zoo create has no option --epochs"]
    assert check("deploy frobnicate x") == ["no command 'frobnicate'"]


def test_documented_commands_parse_fences_continuations_and_inline_spans() -> None:
    page = ("Run `deploy\nexport --no-rewrite` or `deploy.fold`.\n\n```\n$ deploy bench a.onnx \\\n"
            "      --vs b.onnx\nout\ndeploy build m.onnx -o e.plan\n    [--fp16]\n```\n")
    assert list(documented_commands(page)) == ["deploy bench a.onnx --vs b.onnx", "deploy build m.onnx -o e.plan [--fp16]",
                                               "deploy export --no-rewrite"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_documented_command_line_matches_the_cli(page: Path) -> None:
    problems = [f"{line!r}: {p}" for line in documented_commands(page.read_text()) for p in check(line)]
    assert not problems, "\n".join(problems)
