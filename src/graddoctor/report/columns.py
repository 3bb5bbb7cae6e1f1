"""The per-layer table's columns and how they fit a width: whole columns go, a number never shrinks.

Pure: rows (the diagnosis's `context["table"]`) and a width in, a rich Table out. Every cell
is formatted once, here, and each column is built exactly as wide as its widest cell, so rich
never has to shorten one. When the columns do not fit the width, whole columns go in the
order of their `drop` rank (the bar, type, dead, sat, gain, vs) while the layer names fold onto
lines of NAME_FOLD characters; then the names fold further (down to NAME_MIN). Room left over
widens the names, then the signal bar (BAR_MIN to BAR_MAX). `#`, layer, grad RMS, signal and
judged are never dropped: if even they do not fit, the table is wider than the width (the
terminal wraps its lines; nothing is cut). `judged` and `vs` (what the verdict compared each
layer with) appear for networks of blocks only: in a chain of layers they repeat `signal`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from rich import box
from rich.table import Column, Table
from rich.text import Text

BAR_MAX = 24  # the signal bar's length at full width, in characters
BAR_MIN = 8  # narrower than this the bar says nothing: it is dropped instead
BAR_DECADES = 12  # decades of error signal that fill the bar
NAME_FOLD = 24  # a longer layer name folds onto more lines before a column is dropped for it
NAME_MIN = 12  # ... and down to this many characters a line when even the kept columns do not fit


def _num(key: str, spec: str) -> Callable[[int, dict], str]:
    def cell(_: int, row: dict) -> str:
        v = row.get(key)
        return "" if v is None or not math.isfinite(v) else format(v, spec)
    return cell


def _text(key: str) -> Callable[[int, dict], str]:
    return lambda _, row: str(row.get(key) or "")


@dataclass(frozen=True)
class Col:
    """One column: header, how a row becomes its text, and when it goes."""

    header: str
    cell: Callable[[int, dict], str]  # (1-based row number, table row) -> the cell's text
    drop: int = 0  # 0: always shown; when the width is short, the highest rank goes first
    wide_only: bool = False  # shown only with --wide (wide=True)
    left: bool = False  # left-justified (text) rather than right (numbers)


def _vs(_: int, row: dict) -> str:
    """What the verdict compared the layer with, named inside the layer's block: 'block' for the
    block's output, else the layer's name without the block's prefix ('attention.self.value')."""
    against, block = row.get("compared_with"), row.get("block")
    if not against:
        return ""
    if against == block:
        return "block"
    return against[len(block) + 1:] if block and against.startswith(block + ".") else str(against)


BAR = "bar"  # the header of the one column drawn, not formatted (signal_bar)
JUDGED = ("judged", "vs")  # shown only for networks of blocks (judged_by_structure)
COLUMNS: tuple[Col, ...] = (
    Col("#", lambda i, _: str(i)),
    Col("layer", _text("name"), left=True),
    Col("type", _text("type"), drop=5, left=True),
    Col("activation", _text("activation"), wide_only=True, left=True),
    Col("grad RMS", _num("grad_rms", ".2e")),
    Col("signal", _num("signal_decades", "+.1f")),  # log10(error signal / the reference layer's)
    Col("judged", _num("judged_decades", "+.1f")),  # log10(error signal / what the verdict compared it with)
    Col("vs", _vs, drop=1, left=True),
    Col(BAR, lambda _, row: "", drop=6, left=True),
    Col("gain", _num("gain", ".3g"), drop=2),
    Col("sat", _num("saturated", ".0%"), drop=3),
    Col("dead", _num("dead", ".0%"), drop=4),
    Col("update ratio", _num("update_ratio", ".2e"), wide_only=True),
    Col("input std", _num("act_std", ".3g"), wide_only=True),
)


def judged_by_structure(rows: list[dict]) -> bool:
    """True when the verdict compared layers with more than one thing (a network of blocks: branch
    exits, block outputs); in a chain every layer is judged against the reference, as `signal` shows."""
    return len({r.get("compared_with") for r in rows if r.get("compared_with")}) > 1


def bar_key(rows: list[dict]) -> str:
    """The row key the bar draws: what the verdict judged."""
    return "judged_decades" if judged_by_structure(rows) else "signal_decades"


def signal_bar(decades: float | None, width: int = BAR_MAX) -> Text:
    """|log10(signal / reference)| as a bar: ▼ below the reference, ▲ above; green near it, red far off."""
    if decades is None or not math.isfinite(decades):
        return Text("")
    n = max(0, min(width - 1, round(abs(decades) / BAR_DECADES * (width - 1))))
    style = "green" if abs(decades) < 1 else "yellow" if abs(decades) < 2 else "red"
    return Text(("▼" if decades < 0 else "▲") + "█" * n, style=style)


@dataclass
class Fitted:
    """The table to print, and what did not fit."""

    table: Table
    width: int  # characters a line
    hidden: list[str]  # headers of the columns left out (wide-only ones included)


def cells(rows: list[dict]) -> dict[str, list[str]]:
    """Header -> the text of every row's cell (the bar's is empty: it is drawn)."""
    return {c.header: [c.cell(i, row) for i, row in enumerate(rows, 1)] for c in COLUMNS}


SEP = 3  # characters between two columns (box.SIMPLE_HEAD, no edge, no edge padding)


def _width(c: Col, texts: dict[str, list[str]], name_w: int, bar_w: int) -> int:
    """A column's width: its widest cell or header (the layer column: name_w; the bar: bar_w)."""
    w = max([len(c.header)] + [len(t) for t in texts[c.header]])
    if c.header == "layer":
        return max(min(w, name_w), len(c.header))
    return bar_w if c.header == BAR else w


def _total(cols: list[Col], texts: dict[str, list[str]], name_w: int, bar_w: int) -> int:
    return sum(_width(c, texts, name_w, bar_w) for c in cols) + SEP * (len(cols) - 1)


def _build(rows: list[dict], texts: dict[str, list[str]], cols: list[Col], name_w: int, bar_w: int) -> Table:
    drawn = bar_key(rows)
    spec = []
    for c in cols:
        w = _width(c, texts, name_w, bar_w)
        if c.header == "layer":  # folds: a long name takes more lines, never loses a character
            spec.append(Column(c.header, width=w, overflow="fold"))
        else:
            spec.append(Column(c.header, width=w, no_wrap=True, justify="left" if c.left else "right"))
    t = Table(*spec, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, row in enumerate(rows):
        t.add_row(*[signal_bar(row.get(drawn), bar_w) if c.header == BAR else texts[c.header][i]
                    for c in cols])
    return t


def fit(rows: list[dict], width: int | None = None, wide: bool = False) -> Fitted:
    """The table for `width` characters (None: its natural width, every default column)."""
    texts = cells(rows)
    absent = () if judged_by_structure(rows) else JUDGED  # a chain: `signal` is what was judged
    cols = [c for c in COLUMNS if (wide or not c.wide_only) and c.header not in absent]
    longest = max(len(t) for t in texts["layer"] + ["layer"])
    name_w, bar_w = longest, BAR_MAX
    if width is not None:
        need = lambda name, bar: _total(cols, texts, name, bar)
        fold = min(longest, NAME_FOLD)
        droppable = sorted((c for c in cols if c.drop), key=lambda c: -c.drop)
        while need(fold, BAR_MIN) > width and droppable:
            cols.remove(droppable.pop(0))
        fold = max(min(longest, NAME_MIN), fold - max(0, need(fold, BAR_MIN) - width))  # still over: fold more
        spare = max(0, width - need(fold, BAR_MIN))  # the room left goes to the names first, then the bar
        name_w = fold + min(spare, longest - fold)
        bar_w = BAR_MIN + min(BAR_MAX - BAR_MIN, spare - (name_w - fold))  # (unused when the bar went)
    return Fitted(_build(rows, texts, cols, name_w, bar_w), _total(cols, texts, name_w, bar_w),
                  [c.header for c in COLUMNS if c not in cols and c.header not in absent])
