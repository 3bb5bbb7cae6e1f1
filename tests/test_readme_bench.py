"""The README's bench section (after `<!-- section:bench -->`): its python blocks run as written,
and the describe() output it shows is what the code prints."""
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def bench_section() -> str:
    text = README.read_text()
    start = text.index("<!-- section:bench -->")
    end = text.index("\n## ", start)  # the next top-level section
    return text[start:end]


def test_bench_section_python_blocks_run_and_print_what_the_readme_shows():
    section = bench_section()
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    shown = re.findall(r"```text\n(.*?)```", section, re.S)
    assert len(blocks) >= 2 and shown
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(blocks[0], "README.md:bench[0]", "exec"), namespace)
    assert printed.getvalue() == shown[0]  # golden: the describe() example
    for i, block in enumerate(blocks[1:], 1):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block, f"README.md:bench[{i}]", "exec"), namespace)
