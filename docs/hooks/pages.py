"""MkDocs hook: the parts of pages that are generated from the code when the site is built.

A page asks for one with a marker line; the hook replaces it before the page is rendered:

- `<!-- generated:cli -->` (docs/cli.md): `graddoctor --help` and every command's `--help`,
  from the real argument parser (so the page cannot drift from the code);
- `<!-- generated:benchmarks -->` (docs/benchmarks.md): one section per `benchmarks/*.py` with
  the first paragraph of its docstring, its command, and its results file included
  (`--8<-- "results/NAME.md"`, then processed by pymdownx.snippets), or a line saying which
  command writes it while it does not exist yet. Results files no script is named after are
  included at the end. A new benchmark needs no edit here or on the page.

How numbers reach the pages is described in docs/development.md.
"""
from __future__ import annotations

import ast
import contextlib
import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's graddoctor, whichever one the venv has installed
RESULTS = ROOT / "docs" / "results"
HELP_COLUMNS = "100"  # argparse wraps help at $COLUMNS: fixed, so the page is the same everywhere


def _help(argv: list[str]) -> str:
    """What `graddoctor ARGV --help` prints."""
    from graddoctor.cli import parser

    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            parser().parse_args([*argv, "--help"])
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue().rstrip()


def cli_page() -> str:
    """Markdown: the top-level help, then one section per command."""
    from graddoctor.cli import COMMANDS

    parts = ["```text", _help([]), "```"]
    for name in COMMANDS:
        parts += ["", f"## graddoctor {name}", "", "```text", _help([name]), "```"]
    return "\n".join(parts)


def _summary(script: Path) -> str:
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def benchmarks_page() -> str:
    """Markdown: each benchmark, its command and its results file (included), then other results files."""
    parts, named = [], set()
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        name = script.stem
        parts += [f"## {name}", "", _summary(script) or f"`benchmarks/{name}.py`", "",
                  f"Command: `python benchmarks/{name}.py` (also run by `make bench`).", ""]
        found = sorted(RESULTS.glob(f"{name}.md")) + sorted(RESULTS.glob(f"{name}-*.md"))
        named.update(found)
        if found:
            for f in found:
                parts += [f'--8<-- "results/{f.name}"', ""]
        else:
            parts += [f"*No results file yet: the command above writes `docs/results/{name}.md`.*", ""]
    others = [f for f in sorted(RESULTS.glob("*.md")) if f not in named]
    if others:
        parts += ["## Other results files", ""]
        for f in others:
            parts += [f"### {f.stem}", "", f'--8<-- "results/{f.name}"', ""]
    return "\n".join(parts)


GENERATED = {"<!-- generated:cli -->": cli_page, "<!-- generated:benchmarks -->": benchmarks_page}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each marker line with what it stands for."""
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
