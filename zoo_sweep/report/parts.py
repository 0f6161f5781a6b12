"""What a report is made of: tables (numbers and a view for reading), plot panels, and the report itself."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from zoo_sweep.report.queries import SQL, fill_params


@dataclass
class ReportTable:
    key: str  # file name (CSV) and anchor
    title: str
    data: pd.DataFrame  # numbers (CSV), intervals in *_lo / *_hi columns
    view: pd.DataFrame  # the same table for reading: "estimate [lo, hi]" strings
    sql: list[str]  # keys of SQL the rows come from
    note: str = ""  # how the numbers were computed from those rows


@dataclass
class Panel:
    key: str
    title: str
    caption: str
    path: Path | None = None  # None: nothing to draw, ``caption`` says why


@dataclass
class Report:
    sweep: str
    eval_set: str
    params: dict
    db_url: str = ""
    num_classes: int | None = None
    findings: list[str] = field(default_factory=list)
    sections: list[tuple[str, list]] = field(default_factory=list)  # (heading, [ReportTable | Panel | str])
    files: list[Path] = field(default_factory=list)
    html: Path | None = None

    @property
    def tables(self) -> list[ReportTable]:
        return [x for _, items in self.sections for x in items if isinstance(x, ReportTable)]

    @property
    def panels(self) -> list[Panel]:
        return [x for _, items in self.sections for x in items if isinstance(x, Panel)]

    def sql_text(self, key: str) -> str:
        """The query ``key`` with its parameters filled in as SQL literals, on one line."""
        return fill_params(SQL[key], self.params)

    def sql_command(self, key: str) -> str:
        """A shell command that re-runs the query ``key`` on this store."""
        sql = self.sql_text(key)
        db = f"--db {shlex.quote(self.db_url)} " if self.db_url else ""
        quoted = f'"{sql}"' if not re.search(r'["$`\\!]', sql) else shlex.quote(sql)
        return f"zoo-sweep {db}query {quoted}"
