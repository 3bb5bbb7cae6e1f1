"""The bench page (docs/bench.md): its python blocks run as written, and the describe() output
it shows is what the code prints."""
import contextlib
import io
import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "bench.md"


def bench_section() -> str:
    return PAGE.read_text()


def test_bench_section_python_blocks_run_and_print_what_the_readme_shows():
    section = bench_section()
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    shown = re.findall(r"```text\n(.*?)```", section, re.S)
    assert len(blocks) >= 2 and shown
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(blocks[0], "docs/bench.md[0]", "exec"), namespace)
    assert printed.getvalue() == shown[0]  # golden: the describe() example
    for i, block in enumerate(blocks[1:], 1):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block, f"docs/bench.md[{i}]", "exec"), namespace)
