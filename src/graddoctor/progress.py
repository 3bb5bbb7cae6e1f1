"""One progress bar for all long work (training epochs, treat candidates, sweeps)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._p, self._t = progress, task

    def update(self, advance: float = 0, **fields: object) -> None:
        """Advance the bar and set its status text fields."""
        if self._p is not None:
            info = "  ".join(f"{k} {v}" for k, v in fields.items())
            self._p.update(self._t, advance=advance, info=info)


@contextmanager
def bar(total: float, description: str, enabled: bool = True,
        console: Console | None = None) -> Iterator[_Bar]:
    """A rich progress bar (a no-op when disabled or when stderr is not a terminal)."""
    console = console or Console(stderr=True)
    if not enabled or not (console.is_terminal or console.is_jupyter):
        yield _Bar(None, None)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False) as p:
        yield _Bar(p, p.add_task(description, total=total, info=""))

