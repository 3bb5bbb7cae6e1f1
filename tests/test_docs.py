"""The documentation site: it builds with --strict, its numbers come from results files, its code runs.

- `mkdocs build --strict` (no broken link, reference or include; the API reference and the CLI
  page generated);
- every number a page quotes (tests/docsnumbers.py says precisely what counts) is in a results
  file the page includes, or is one of the page's explicit constants. Pages of other owners
  that still paste numbers are xfail with the owner's name until they include their results;
- every python block of the pages in EXECUTED runs as written (pydantic/FastAPI-style), in a
  scratch folder.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from docsnumbers import DOCS, ROOT, quotes, unsupported

from graddoctor import activations
from graddoctor.diagnose import thresholds
from graddoctor.nets import NetSpec
from graddoctor.theory import batchnorm
from graddoctor.training import TrainConfig

PAGES = sorted(p.name for p in DOCS.glob("*.md"))
# Pages whose pasted numbers are their owner's to replace with included results (issue 17).
OWNERS: dict[str, str] = {}


def _defaults(*classes) -> set[str]:
    """The default values of dataclass fields, as a page writes them."""
    return {str(f.default) for c in classes for f in fields(c) if isinstance(f.default, float)}


# Definitions, not measurements: each computed from the code where the code has it.
CONSTANTS: dict[str, set[str]] = {
    "bench.md": _defaults(NetSpec, TrainConfig) | {
        "0.25",  # PReLU's initial slope (torch's default)
        f"{activations.SATURATION_FRACTION:.0%}",  # where a unit counts as saturated
    },
    "report.md": {f"{activations.SATURATION_FRACTION:.0%}"},
    "theory.md": {f"{math.sqrt(batchnorm.wide_batch_gain('relu')):.3f}x"},  # BN's ReLU gain per layer, B -> inf
    "integrations.md": {f"{thresholds.TIME_EDGE_FRACTION:.0%}"},  # the through-time rule's first/last steps
    "development.md": {"0.23", "1e-55", "10^-12"},  # examples of what the rule counts
}
# Fenced blocks (0-based index among a page's fences) that a test compares with what the code prints.
GOLDEN_BLOCKS: dict[str, set[int]] = {
    "bench.md": {1},  # tests/test_docs_bench.py: describe()'s output
    "theory.md": {2},  # tests/test_theory.py::test_docs_theory_page_example_runs_as_shown
    "integrations.md": {6},  # tests/test_docs_examples.py: the RNN example's output
}
EXECUTED = ("index.md", "report.md")  # (bench.md's blocks: tests/test_docs_bench.py)


def _strict() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with --strict."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        if _strict():
            pytest.fail("mkdocs / mkdocstrings missing: `make setup` installs them")
        pytest.skip("mkdocs not installed (pip install 'graddoctor[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _text(html_file: Path) -> str:
    t = re.sub(r"<script.*?</script>|<style.*?</style>", " ", html_file.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t)).replace("&gt;", ">").replace("&lt;", "<")


def test_site_builds_strict_with_reference_cli_and_included_results(site):
    from graddoctor.cli import COMMANDS

    cli = _text(site / "cli" / "index.html")
    for name in COMMANDS:  # every command's real --help, generated at build time
        assert f"usage: graddoctor {name}" in cli, name
    assert "--wide" in cli
    store = _text(site / "reference" / "store" / "index.html")
    assert "RunStore" in store and "with its series" in store  # load_trace's docstring, rendered
    started = _text(site / "getting-started" / "index.html")
    last = (DOCS / "results" / "demo.md").read_text().strip().splitlines()[-1]
    squeeze = lambda t: re.sub(r"[\s*`]", "", t)
    assert squeeze(last) in squeeze(started)  # the results file is on the page
    bench = _text(site / "benchmarks" / "index.html")
    for script in (ROOT / "benchmarks").glob("*.py"):
        assert f"python benchmarks/{script.name}" in bench


def _page_param(name: str):
    marks = ()
    if name in OWNERS:
        marks = pytest.mark.xfail(reason=f"{name} still pastes numbers; its owner ({OWNERS[name]}) includes "
                                         f"results files instead (issue 17)", strict=False)
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_page_param(n) for n in PAGES] + ["README"])
def test_every_quoted_number_comes_from_an_included_results_file(name):
    path = ROOT / "README.md" if name == "README" else DOCS / name
    bad = unsupported(path, CONSTANTS.get(name, set()), GOLDEN_BLOCKS.get(name, set()))
    report = "\n".join(f"  {name}:{q.line}: {q.number}   | {q.context}" for q in bad)
    assert not bad, f"{len(bad)} quoted numbers that no included results file contains:\n{report}"


def test_the_number_rule_catches_pasted_numbers_and_spares_inputs():
    page = ("Training reaches 95.5% in 12 s (1.27x the plain loop), a ratio of 10^-12 or 1e-55.\n"
            "A 20-layer net, 10 epochs, seed 0, Glorot 2010, Python 3.11, torch==2.13.0, `body.0.linear`.\n"
            "`graddoctor train --lr 0.01` and `TrainConfig(lr=0.05)`; `final: val acc 0.078`.\n"
            "```python\nx = 0.5  # measured 0.975\n```\n```text\nval acc 0.897\n```\n"
            '<!-- 0.123 -->\n--8<-- "results/x.md"\n[link](https://x.org/1.5)\n')
    assert [q.number for q in quotes(page)] == ["95.5%", "12s", "1.27x", "10^-12", "1e-55", "0.078", "0.975",
                                                "0.897"]
    assert [q.number for q in quotes(page, golden_blocks={1})] == ["95.5%", "12s", "1.27x", "10^-12", "1e-55",
                                                                   "0.078", "0.975"]


def test_the_docs_results_show_every_exponent_at_80_columns():
    """docs/results/terminal-check-80.txt: `graddoctor check` as an 80-column terminal shows it."""
    text = (DOCS / "results" / "terminal-check-80.txt").read_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    table = [line for line in text.splitlines() if re.match(r"\s*\d+\s+\S+\s", line)]
    assert len(table) == 21 and all(re.search(r"\b\d\.\d\de-\d\d\b", line) for line in table)


@pytest.mark.parametrize("name", EXECUTED)
def test_python_blocks_of_the_page_run_as_written(name, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)  # what the examples write lands here
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/{name}[{i}]", "exec"), scope)
    if name == "index.md":  # the front page's example finds what it says
        assert out.getvalue().startswith("UNHEALTHY") and "vanishing" in out.getvalue()
    if name == "report.md":  # the store example writes a report and the five figures
        assert (tmp_path / "report.html").stat().st_size > 10_000
        assert len(list((tmp_path / "figures").glob("*.png"))) == 5


def test_pages_of_this_site_have_no_unexecuted_python_blocks():
    """Each python block on a page listed here is run by a test (EXECUTED, or test_docs_bench for bench.md)."""
    for name in ("index.md", "getting-started.md", "report.md", "benchmarks.md", "development.md", "cli.md"):
        if "```python" in (DOCS / name).read_text():
            assert name in EXECUTED, name


def test_nav_lists_every_page_once():
    if importlib.util.find_spec("yaml") is None and not _strict():
        pytest.skip("PyYAML (installed with mkdocs) is missing")
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    flat: list[str] = []

    def walk(items):
        for item in items:
            if isinstance(item, str):
                flat.append(item)
            else:
                for v in item.values():
                    walk(v) if isinstance(v, list) else flat.append(v)

    walk(nav)
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if p.parts[len(DOCS.parts)] not in
             ("results", "lab", "hooks")}
    assert len(flat) == len(set(flat)) and set(flat) == pages, set(flat) ^ pages
