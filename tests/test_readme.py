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
    """The treat section's printout is docs/results/treat_lm.md as `python examples/treat_lm.py` wrote it."""
    from docsnumbers import copies

    shown = dict(copies((ROOT / "README.md").read_text()))
    assert "results/treat_lm.md" in shown, "README.md lost its treat section"
    for path, text in shown.items():
        assert text == (ROOT / "docs" / path).read_text(), path
    assert "reloaded into a fresh GPT2LMHeadModel: outputs bit-identical to the treated model: True" in \
        shown["results/treat_lm.md"]
