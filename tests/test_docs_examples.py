"""Output shown on the theory and integrations pages is what the code prints today.

- a fenced text block listed in test_docs.GOLDEN_BLOCKS (exempt from the number rule) is the
  output of the python block just before it: run as written, in a scratch folder, compared;
- docs/results/theory_cli.md (included by docs/theory.md) is what benchmarks/theory_cli.py's
  commands print: rerun and compared, and the page's command list is that list.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re

import pytest
from docsnumbers import DOCS, FENCE, ROOT
from test_docs import GOLDEN_BLOCKS

PAGES = ("theory.md", "integrations.md")


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", PAGES)
def test_shown_output_is_what_the_block_before_it_prints(name, tmp_path, monkeypatch):
    fences = [(m.group(2), m.group(3)) for m in FENCE.finditer((DOCS / name).read_text())]
    assert GOLDEN_BLOCKS[name]
    monkeypatch.chdir(tmp_path)
    for i in sorted(GOLDEN_BLOCKS[name]):
        (lang, shown), (code_lang, code) = fences[i], fences[i - 1]
        assert (lang, code_lang) == ("text", "python"), f"{name}: GOLDEN_BLOCKS[{i}] is not a python block's output"
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(compile(code, f"docs/{name}[{i - 1}]", "exec"), {"__name__": "docs_example"})
        assert out.getvalue() == shown, f"docs/{name}: block {i} differs from what block {i - 1} prints"


def test_theory_page_shows_what_its_commands_print():
    cli = _bench("theory_cli")
    page = (DOCS / "theory.md").read_text()
    listed = re.findall(r"^graddoctor theory (.*)$", re.search(r"```bash\n(.*?)```", page, re.S).group(1), re.M)
    assert tuple(listed) == cli.COMMANDS  # the commands at the top are the ones whose output is shown
    assert '--8<-- "results/theory_cli.md"' in page.splitlines()
    shown = (DOCS / "results" / "theory_cli.md").read_text()
    assert shown == cli.markdown(cli.outputs())  # float64 on fixed seeds: the same digits on a rerun
    words = " ".join(shown.split())  # (rich wraps the header lines)
    for source in ("Poole et al. 2016", "Yang & Schoenholz 2017", "Yang et al. 2019", "Xiao et al. 2018"):
        assert source in words  # one network of each family
    assert shown.count("measured - predicted") == len(cli.COMMANDS)
