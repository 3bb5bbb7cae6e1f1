"""The terminal report (rich): a per-layer table in forward order, the verdict, causes, remedies."""
from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..diagnose.findings import Diagnosis

BAR_DECADES = 12  # the bar's full length, in decades of error signal
_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def signal_bar(decades: float | None, width: int = 24) -> Text:
    """A bar whose length is |log10(signal / reference)|: red when far off, green when near."""
    if decades is None:
        return Text("n/a", style="dim")
    n = max(0, min(width, round(abs(decades) / BAR_DECADES * width)))
    style = "green" if abs(decades) < 1 else "yellow" if abs(decades) < 2 else "red"
    arrow = "▼" if decades < 0 else "▲"
    return Text(f"{arrow}{'█' * n:<{width}} {decades:+.1f}", style=style)


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.0%}"


def layer_table(diagnosis: Diagnosis) -> Table:
    """One row per layer: name, type, grad RMS, signal bar (decades vs the reference), gain, sat %, dead %."""
    ref = diagnosis.context.get("reference_layer", "")
    t = Table(title="error signal per layer (forward order; bar = log10 of the error signal "
              f"relative to {ref})", title_justify="left", expand=False)
    for col, just in (("#", "right"), ("layer", "left"), ("type", "left"), ("grad RMS", "right"),
                      ("error signal vs reference", "left"), ("gain", "right"), ("sat", "right"),
                      ("dead", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    for i, row in enumerate(diagnosis.context.get("table", []), 1):
        g = row.get("grad_rms")
        gain = row.get("gain")
        t.add_row(str(i), row["name"], row["type"], "" if g is None else f"{g:.2e}",
                  signal_bar(row.get("signal_decades")), "" if gain is None else f"{gain:.2f}",
                  _pct(row.get("saturated")), _pct(row.get("dead")))
    return t


def verdict(diagnosis: Diagnosis) -> Panel:
    """The verdict panel: findings with their causes (and evidence) and the remedies to try."""
    if diagnosis.healthy:
        body: list = [Text("Gradients flow through every layer: no vanishing, exploding, saturation, "
                           "dead units or non-finite values.", style="green")]
        return Panel(Group(*body), title="verdict: HEALTHY", border_style="green")
    body = []
    for f in diagnosis.findings:
        body.append(Text.assemble((f"{f.severity.upper()} {f.kind}", _STYLE[f.severity]), f": {f.summary}"))
        for i, c in enumerate(f.causes, 1):
            body.append(Text(f"   cause {i}: {c.name} — {c.explanation}"))
        if f.remedies:
            body.append(Text(f"   try: {', '.join(f.remedies)}", style="cyan"))
    kinds = ", ".join(sorted(diagnosis.kinds()))
    return Panel(Group(*body), title=f"verdict: {kinds.upper()}", border_style="red")


def theory_line(diagnosis: Diagnosis) -> Text | None:
    """'theory predicts 10^-24.0 ... measured 10^-23.9', when the checkup had a prediction."""
    t = diagnosis.context.get("theory")
    if not t:
        return None
    return Text(f"mean-field theory (Poole et al. 2016) predicts ||δ_1||²/||δ_L||² = "
                f"10^{t['predicted_log10_sq_ratio']:.1f} for this network at initialisation; "
                f"measured 10^{t['measured_log10_sq_ratio']:.1f}", style="dim")


def print_diagnosis(diagnosis: Diagnosis, console: Console | None = None) -> None:
    """Print the per-layer table and the verdict."""
    console = console or Console()
    console.print(layer_table(diagnosis))
    console.print(verdict(diagnosis))
    line = theory_line(diagnosis)
    if line is not None:
        console.print(line)
