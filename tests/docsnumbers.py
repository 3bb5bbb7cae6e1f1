"""What counts as a number *quoted* by a docs page, and where a page may take one from.

A quoted number is a measured-looking token in what a reader sees as the page's text:
- a decimal (0.23, 95.5), a number in scientific form (1e-55, 1.2e+04, 10^-12, 10⁻¹²),
- or any number with a unit that marks a measurement: %, x or × (a ratio), s, ms, µs, min,
  kB, MB, GB (15 s, 1.27x, 100%).
Plain integers (depths, widths, epochs, seeds, counts, years) are not: they are inputs or
citations. Versions (Python 3.11, torch==2.13.0, 2.13.0) are not.

Where the reader sees them: prose, tables and headings; inline code, except the values of
flags and keyword arguments (`--lr 0.1`, `lr=0.1`: inputs); comments in python and shell code
blocks (the code itself is input); the whole of any other fenced block (shown output), except
blocks a test compares with what the code prints (GOLDEN_BLOCKS). Never counted: lines that
include a file (`--8<--`), HTML comments, link and image targets.

A quoted number is allowed when it appears in a file the page includes (a results file
written by a command), or in the page's explicit CONSTANTS (definitions, not measurements).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_UNIT = r"(?:%|[x×](?![\w])|(?:s|ms|µs|us|min|kB|MB|GB)(?![\w]))"
NUMBER = re.compile(
    r"(?<![\w.^/+])[~≈]?[-−]?(?:"
    r"\d+(?:\.\d+)?[eE][-+−]?\d+"  # 1e-55, 1.2e+04
    r"|10\^\{?[-−+]?\d+(?:\.\d+)?\}?"  # 10^-12, 10^{-12.0}, 10^+1.8
    r"|10[⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+"  # 10⁻¹²
    rf"|\d+\.\d+(?!\d|\.\d)(?:\s?{_UNIT})?"  # 0.23, 95.5%, 1.27x, 0.5 s (not 2.13.0)
    rf"|\d[\d,]*\s?{_UNIT}"  # 100%, 12 s, 389 kB
    r")"
)
VERSION = re.compile(r"(?:Python|torch|numpy|rich|mkdocs|==|>=|<=|~=|<|>|\bv)\s?\d+(?:\.\d+)+|\d+\.\d+\.\d+")
INCLUDE = re.compile(r"""^\s*-+8<-+\s+["']([^"']+)["']""", re.M)
# A verbatim copy of a results file where includes do not work (README.md on a forge):
# <!-- copy: results/x.md --> ... <!-- end copy -->; tests check it is the file's own lines.
COPY = re.compile(r"<!-- copy: (\S+) -->\n(.*?)<!-- end copy -->", re.S)
FENCE = re.compile(r"^(`{3,}|~{3,})([\w+-]*)[^\n]*\n(.*?)^\1\s*$", re.M | re.S)
CODE_LANGS = {"python", "py", "bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Quote:
    """One quoted number on a page: the token, where (line) and the context."""

    number: str
    line: int
    context: str


def normal(token: str) -> str:
    """A token as compared with the results files: no approx sign, one minus, no space before a unit."""
    t = token.lstrip("~≈").replace("−", "-")
    return re.sub(r"\s+(?=\D)", "", t)


def numbers(text: str) -> set[str]:
    """Every quotable token in a text (e.g. a results file), normalised."""
    return {normal(m.group()) for m in NUMBER.finditer(VERSION.sub(" ", text))}


def _blank(text: str, start: int, end: int) -> str:
    """Text with [start, end) replaced by spaces (newlines kept, so line numbers stay)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def visible(page: str, golden_blocks: set[int] = frozenset()) -> str:
    """The page with everything that is not a quotable place blanked out (same length, same lines)."""
    out = page
    for i, m in enumerate(FENCE.finditer(page)):
        lang, body = m.group(2).lower(), m.group(3)
        b0 = m.start(3)
        out = _blank(out, m.start(), b0)  # the fence line itself
        out = _blank(out, m.end(3), m.end())
        if i in golden_blocks:
            out = _blank(out, b0, m.end(3))
        elif lang in CODE_LANGS:  # code is input: keep only its comments
            kept = "".join(re.sub(r"^([^#\n]*)", lambda c: " " * len(c.group(1)), line)
                           for line in body.splitlines(keepends=True))
            out = out[:b0] + kept + out[m.end(3):]
    for pattern in (r"<!--.*?-->", r"^\s*-+8<-+[^\n]*$", r"\]\([^)]*\)", r"<[^>\n]+>"):
        for m in re.finditer(pattern, out, re.M | re.S):
            out = _blank(out, m.start(), m.end())
    for m in re.finditer(r"`([^`\n]+)`", out):  # inline code: flag and keyword values are inputs
        inner = re.sub(r"(--[\w-]+[ =]|\b\w+=)\S+", lambda v: " " * len(v.group()), m.group(1))
        out = out[:m.start(1)] + inner + out[m.end(1):]
    return VERSION.sub(lambda v: " " * len(v.group()), out)


def quotes(page: str, golden_blocks: set[int] = frozenset()) -> list[Quote]:
    """The quoted numbers of a page, in order."""
    text = visible(page, golden_blocks)
    lines = page.splitlines()
    out = []
    for m in NUMBER.finditer(text):
        line = text.count("\n", 0, m.start())
        out.append(Quote(normal(m.group()), line + 1, lines[line].strip()[:120]))
    return out


def included(page: str) -> list[Path]:
    """The files a page includes with `--8<-- "PATH"` or copies (COPY), relative to docs/."""
    return [DOCS / p for p in INCLUDE.findall(page)] + [DOCS / p for p, _ in copies(page)]


def copies(page: str) -> list[tuple[str, str]]:
    """(path relative to docs/, the copied text) of each verbatim copy of a results file on a page."""
    return COPY.findall(page)


def unsupported(page_path: Path, constants: set[str] = frozenset(),
                golden_blocks: set[int] = frozenset()) -> list[Quote]:
    """Quoted numbers of a page that neither an included file nor the page's constants contain."""
    page = page_path.read_text(encoding="utf-8")
    allowed = set(constants)
    for f in included(page):
        allowed |= numbers(f.read_text(encoding="utf-8"))
    return [q for q in quotes(page, golden_blocks) if q.number not in allowed]
