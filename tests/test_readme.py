"""The README's front page: its example runs as written and finds what it says it finds."""
import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_stays_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_readme_example_runs_and_the_deep_sigmoid_net_vanishes():
    block = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    assert len(block.strip().splitlines()) <= 12
    scope: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md", "exec"), scope)
    out = printed.getvalue()
    assert out.startswith("UNHEALTHY") and "vanishing" in out
    assert "vanishing" in {f.kind for f in __import__("graddoctor").diagnose(scope["probe"].trace).findings}


def test_readme_links_point_at_existing_pages():
    for target in re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text()):
        assert (ROOT / target).exists(), target


def test_readme_copies_of_results_files_are_verbatim():
    """README shows results files verbatim: the treat printout (examples/treat_lm.py), the ConvNeXt verdict
    (benchmarks/verdict_examples.py) and the zoo's summary lines (benchmarks/zoo.py)."""
    from docsnumbers import copies

    shown = dict(copies((ROOT / "README.md").read_text()))
    assert {"results/treat_lm.md", "results/verdict-convnext.md", "results/zoo.md"} <= set(shown)
    for path, text in shown.items():  # whole lines of the file, in its order (the whole file or an excerpt)
        assert text.endswith("\n") and ("\n" + text) in ("\n" + (ROOT / "docs" / path).read_text()), (
            f"README.md's copy of docs/{path} is stale: paste the file's lines between its copy markers")
    assert "reloaded into a fresh GPT2LMHeadModel: outputs bit-identical to the treated model: True" in \
        shown["results/treat_lm.md"]
    assert "verdict: HEALTHY" in shown["results/verdict-convnext.md"]
    assert [line.split(":")[0] for line in shown["results/zoo.md"].splitlines()] == ["- calibration", "- held_out"]
