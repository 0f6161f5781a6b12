"""The launch's progress display: one bar per stage, on the launch's console."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not enabled, transient=False)


class StageBar:
    """One stage's progress bar: workers, jobs running, jobs failed for good."""

    def __init__(self, prog: Progress, kind: str, workers: int, total: int):
        self.prog, self.kind, self.workers = prog, kind, workers
        self.running = 0
        self.failed: list[tuple[str, str]] = []
        self.task = prog.add_task(self._text(), total=total)

    def _text(self) -> str:
        return (f"{self.kind}: {self.workers} worker(s), {self.running} running"
                + (f", [red]{len(self.failed)} failed[/]" if self.failed else ""))

    def started(self) -> None:
        self.running += 1
        self.prog.update(self.task, description=self._text())

    def ended(self, counts: bool = True) -> None:
        """A job left the worker: done or failed for good (``counts``), or back in the queue for a retry."""
        self.running -= 1
        self.prog.update(self.task, advance=1 if counts else 0, description=self._text())
