"""Each job's log: what happened to it, attempt by attempt, as one text file in the results folder
(``logs/jobs/<job id>.log``), attached to the job's run where a tracker is on (pipeline/tracking.py).

A worker keeps its job's lines and returns them with the outcome; the launcher appends them, with the outcome
itself, to the job's file. So a job's log holds every attempt on every host (a retry on another node, a
resumed launch), and workers need no folder shared with the launcher's, as for every other result.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from zoo_sweep.paths import Paths


def stamp(text: str, when: float | None = None) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}  {text}"


class JobLog:
    """A job's lines as its worker runs it; ``log("...")`` adds one, time-stamped."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(stamp(text))


def epoch_line(row: dict, epochs: int, seconds: float) -> str:
    """One transfer epoch as the log says it: what a researcher checks first (loss, accuracy, change)."""
    def num(k: str, fmt: str) -> str:
        v = row.get(k)
        return "n/a" if v is None or v != v else format(v, fmt)

    return (f"epoch {row['epoch']}/{epochs}: train loss {num('train_loss', '.4f')}, student accuracy "
            f"{num('student_acc', '.2f')} % (delta {num('delta', '+.2f')}), teacher share "
            f"{num('teacher_share', '.1f')} %, {seconds:.1f} s")


def job_log_path(paths: Paths, job_id: str) -> Path:
    return paths.home / "logs" / "jobs" / f"{job_id}.log"


def append(paths: Paths, job_id: str, lines: Iterable[str]) -> Path | None:
    """Append ``lines`` to the job's log file. A log that cannot be written (a full disk, a read-only folder)
    never fails the job: its result is in the store all the same; None then."""
    path = job_log_path(paths, job_id)
    text = "".join(f"{line}\n" for line in lines)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        return None
    return path
