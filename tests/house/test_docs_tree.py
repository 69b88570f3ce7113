"""The documentation holds to the code: docs/architecture.md's package tree lists exactly the
modules on disk, README.md stays an overview (at most 300 lines), and every docs/ page it links
to exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("deploy", "exporters", "validators")
README_MAX_LINES = 300


def tree_modules(text: str) -> set[str]:
    """The ``.py`` paths of the fenced block right after ``<!-- package-tree -->``: the first word of
    each line (a module per line, then its description); other lines (data files, blanks) are skipped."""
    match = re.search(r"<!-- package-tree -->\s*```[^\n]*\n(.*?)```", text, re.S)
    assert match, "docs/architecture.md has no <!-- package-tree --> fenced block"
    words = (line.split()[0] for line in match.group(1).splitlines() if line.strip())
    return {w for w in words if w.endswith(".py")}


def modules_on_disk(root: Path = ROOT) -> set[str]:
    return {p.relative_to(root).as_posix() for pkg in PACKAGES for p in (root / pkg).rglob("*.py")
            if "__pycache__" not in p.parts}


def test_tree_parser_reads_one_module_per_line() -> None:
    text = "x\n<!-- package-tree -->\n```\ndeploy/a.py   one\n\ndeploy/data/d.csv.gz  data\nexporters/b/c.py two\n```\n"
    assert tree_modules(text) == {"deploy/a.py", "exporters/b/c.py"}


def test_architecture_tree_lists_exactly_the_modules() -> None:
    listed = tree_modules((ROOT / "docs" / "architecture.md").read_text())
    on_disk = modules_on_disk()
    assert listed == on_disk, (f"in the tree but not on disk: {sorted(listed - on_disk)}; "
                               f"on disk but not in the tree: {sorted(on_disk - listed)}")


def test_readme_is_at_most_300_lines() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move detail to a docs/ page"


def test_readme_docs_links_exist() -> None:
    text = (ROOT / "README.md").read_text()
    links = set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", text))
    assert links, "README.md links to no docs/*.md page"
    missing = sorted(link for link in links if not (ROOT / link).is_file())
    assert not missing, f"README.md links to missing pages: {missing}"
