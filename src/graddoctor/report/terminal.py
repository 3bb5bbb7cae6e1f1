"""The terminal report (rich): the network's structure, the per-layer table (the chain view and, for
networks of blocks, what the verdict judged), the depth axis block by block, the verdict, causes
and remedies — at any width, without cutting a number.

Which width: a terminal's own; else the COLUMNS environment variable; else (a pipe, a CI log,
a file) none: the table prints at its natural width with every default column. `wide=True`
(the `--wide` flag) shows every column, wide-only ones included, at natural width. When
columns are left out, a line names them and says how to see them. Fitting is columns.py's.
"""
from __future__ import annotations

import os

from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.padding import Padding
from rich.panel import Panel
from rich.segment import Segment, Segments
from rich.text import Text

from ..diagnose.findings import Diagnosis
from ..diagnose.structure import block_index
from .columns import BAR, fit, judged_by_structure, signal_bar

__all__ = ["depth_axis", "output_width", "print_diagnosis", "print_uncut", "render_text", "signal_bar", "verdict"]

PROSE_MIN = 80  # at natural width, prose (title, verdict) wraps at the table's width, but at least this
_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def output_width(console: Console, wide: bool = False) -> int | None:
    """The width to fit the table to: the terminal's, else $COLUMNS, else None (natural width)."""
    if wide:
        return None
    if console.is_terminal:
        return console.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def structure_summary(d: Diagnosis | None) -> str | None:
    """The one-line description of the network's structure the diagnosis learned, if it has one."""
    s = d.context.get("structure") if d is not None else None
    summary = s.get("summary") if isinstance(s, dict) else None
    return str(summary) if summary else None


def structure_line(diagnosis: Diagnosis) -> Text | None:
    """'structure: ...': the one-line description of the network the diagnosis learned, if any."""
    summary = structure_summary(diagnosis)
    return Text.assemble(("structure: ", "bold"), summary) if summary else None


def verdict(diagnosis: Diagnosis) -> Panel:
    """The verdict panel: findings with their causes and the remedies to try."""
    if diagnosis.healthy:
        body: list = [Text("Gradients flow through every layer: no vanishing, exploding, saturation, "
                           "dead units or non-finite values.", style="green")]
        for f in diagnosis.findings:  # info only: by-design patterns, with their evidence
            body.append(Text.assemble((f"INFO {f.kind}", _STYLE["info"]), f": {f.summary}"))
        return Panel(Group(*body), title="verdict: HEALTHY", border_style="green")
    body = []
    for f in diagnosis.findings:
        body.append(Text.assemble((f"{f.severity.upper()} {f.kind}", _STYLE[f.severity]), f": {f.summary}"))
        for i, c in enumerate(f.causes, 1):  # indented as a block, so wrapped lines stay under their cause
            body.append(Padding(Text(f"cause {i}: {c.name} — {c.explanation}"), (0, 0, 0, 3)))
        if f.remedies:
            body.append(Padding(Text(f"try: {', '.join(f.remedies)}", style="cyan"), (0, 0, 0, 3)))
    kinds = ", ".join(sorted(diagnosis.kinds()))
    return Panel(Group(*body), title=f"verdict: {kinds.upper()}", border_style="red")


def theory_line(diagnosis: Diagnosis) -> Text | None:
    """'<the prediction's source>: ||δ_1||²/||δ_L||² = 10^-24.0 predicted ..., 10^-23.9 measured', if any."""
    t = diagnosis.context.get("theory")
    if not t:
        return None
    source = t.get("source") or "mean-field theory"  # diagnoses stored before 'source' existed
    return Text(f"{source}: ||δ_1||²/||δ_L||² = 10^{t['predicted_log10_sq_ratio']:.1f} predicted for this "
                f"network at initialisation, 10^{t['measured_log10_sq_ratio']:.1f} measured", style="dim")


def depth_axis(d: Diagnosis | None) -> list[dict]:
    """Per stack judged along its depth axis: {"stack", "axis", "reference", "blocks": [(index, name,
    decades)], "stages": [index of each stage's first block]}; decades = log10 dL/d(block output) per
    element against the stack's last block, as the verdict compared them."""
    s = d.context.get("structure") if d is not None else None
    if not isinstance(s, dict):
        return []
    out = []
    for key in s.get("stacks", {}):
        blocks = [b for b in s.get("blocks", []) if b.get("stack") == key and b.get("signal_decades") is not None]
        if not blocks:
            continue
        residual = sum(bool(b.get("residual")) for b in blocks) >= len(blocks) / 2
        stage = [b["name"].rsplit(".", 1)[0] for b in blocks]
        out.append({"stack": key, "axis": "residual stream" if residual else "chain of blocks",
                    "reference": blocks[-1]["name"],
                    "blocks": [(block_index(b["name"]), b["name"], b["signal_decades"]) for b in blocks],
                    "stages": [j for j in range(1, len(blocks)) if stage[j] != stage[j - 1]]})
    return out


def depth_lines(diagnosis: Diagnosis) -> list[Text]:
    """'along 'h.*' (residual stream) ...: 0:+0.1 1:+0.0 ...', one line a stack ('|' between stages)."""
    out = []
    for a in depth_axis(diagnosis):
        cells = []
        for j, (index, _, decades) in enumerate(a["blocks"]):
            cells += ["|"] if j in a["stages"] else []
            cells.append(f"{index}:{decades:+.1f}")
        out.append(Text.assemble(("depth axis: ", "bold"), f"log10 dL/d(block output) per element along "
                                 f"{a['stack']!r} ({a['axis']}), relative to its last block {a['reference']!r}"
                                 f"{' (| : a stage transition)' if a['stages'] else ''}: {' '.join(cells)}"))
    return out


def report_parts(diagnosis: Diagnosis, width: int | None, wide: bool = False,
                 hint: str = "--wide") -> tuple[list[RenderableType], int]:
    """What to print, in order, and the width to print it at (never less than the table's)."""
    width = None if wide else width  # wide: every column at its natural width
    parts: list[RenderableType] = []
    line = structure_line(diagnosis)
    if line is not None:
        parts.append(line)
    rows = diagnosis.context.get("table", [])
    out_w = width if width is not None else PROSE_MIN
    if rows:
        fitted = fit(rows, width, wide)
        out_w = max(out_w, fitted.width)
        ref = diagnosis.context.get("reference_layer", "")
        bar = BAR not in fitted.hidden
        if judged_by_structure(rows):
            head = (f"signal = log10 of the layer's error signal relative to {ref!r} (the chain view); judged = "
                    "relative to what the verdict compared it with (vs): its branch's exit, its block's output, "
                    "V for Q/K; blank: not compared layer by layer" + (" (the bar draws judged)" if bar else ""))
        else:
            head = f"signal = log10 of the layer's error signal relative to {ref!r}" + (" (the bar draws it)" if bar
                                                                                         else "")
        parts.append(Text(f"error signal per layer, forward order; {head}", style="bold"))
        parts.append(fitted.table)
        if fitted.hidden:
            at = f" at {width} columns" if width is not None else ""
            parts.append(Text(f"left out{at}: {', '.join(fitted.hidden)} (all columns: {hint})", style="dim"))
    parts += depth_lines(diagnosis)
    parts.append(verdict(diagnosis))
    for line in (theory_line(diagnosis), stream_line(diagnosis)):
        if line is not None:
            parts.append(line)
    return parts, out_w


def _rstrip(line: list[Segment]) -> list[Segment]:
    """A rendered line without its trailing blanks (rich pads lines to the width)."""
    line = list(line)
    while line and not line[-1].control and not line[-1].text.rstrip():
        line.pop()
    if line and not line[-1].control:
        line[-1] = Segment(line[-1].text.rstrip(), line[-1].style)
    return line


def _emit(console: Console, parts: list[RenderableType], width: int) -> None:
    """Print at `width` even when the console is narrower: rendered here, then written uncropped."""
    options = console.options.update_width(width)
    segments = [seg for part in parts for line in console.render_lines(part, options, pad=False)
                for seg in [*_rstrip(line), Segment.line()]]
    console.print(Segments(segments), crop=False, end="")


def print_uncut(console: Console, renderable: RenderableType) -> None:
    """Print a table (or any renderable) without rich shortening a cell to fit the width.

    In a pipe without $COLUMNS it is printed at its natural width; otherwise at the output
    width, or at the least width that keeps every no-wrap cell whole if that is wider.
    """
    width = output_width(console)
    need = Measurement.get(console, console.options.update_width(10_000), renderable)
    _emit(console, [renderable], need.maximum if width is None else max(width, need.minimum))


def print_diagnosis(diagnosis: Diagnosis, console: Console | None = None, wide: bool = False,
                    hint: str = "--wide") -> None:
    """Print the structure, the per-layer table and the verdict, fitted to the output (see output_width)."""
    console = console or Console()
    parts, width = report_parts(diagnosis, output_width(console, wide), wide, hint)
    _emit(console, parts, width)


def render_text(diagnosis: Diagnosis, width: int | None, wide: bool = False, hint: str = "--wide") -> str:
    """The terminal report as plain text for `width` columns (None: natural width), e.g. for a file."""
    console = Console(width=10_000, color_system=None, force_terminal=False, record=False)
    parts, out_w = report_parts(diagnosis, width, wide, hint)
    with console.capture() as cap:
        _emit(console, parts, out_w)
    return cap.get()


def stream_line(diagnosis: Diagnosis) -> Text | None:
    """'<source>: RMS dL/d(block output), first block over last = 10^+0.08 predicted, 10^+0.08 measured ...', if any."""
    t = diagnosis.context.get("theory_stream")
    if not t:
        return None
    stacks = "; ".join(f"10^{s['predicted'][0]:+.2f} predicted, 10^{s['measured'][0]:+.2f} measured ({s['stack']}, "
                       f"{s['form']}, {len(s['blocks'])} blocks)" for s in t["stacks"])
    return Text(f"{t['source']}: RMS of dL/d(block output), first block over last = {stacks}; per-block error at most "
                f"{t['worst_error']:.2f} decades", style="dim")
