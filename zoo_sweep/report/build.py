"""Read the store and summarise a sweep: tables for the terminal, and a report folder with a self-contained
HTML page (plots embedded), the PNG plots beside it, every table as CSV and a Markdown summary.

Every table comes from SQL in ``queries.SQL`` (the page shows each query with its parameters filled in,
ready for ``zoo-sweep query``); means, success rates, correlations and their bootstrap 95 % intervals are
computed from those rows by ``zoo_sweep.science.stats`` (pairs resampled, seeded). The pieces: rows
(queries.py), sections (sections.py: tables.py and figures.py), findings (findings.py), files (here,
markdown.py and html.py).
"""

from __future__ import annotations

from pathlib import Path

from zoo_sweep.report import sections
from zoo_sweep.report.findings import findings
from zoo_sweep.report.html import write_html
from zoo_sweep.report.markdown import markdown
from zoo_sweep.report.parts import Report
from zoo_sweep.report.queries import (  # noqa: F401  (callers of the report read its queries from here)
    SQL,
    final_transfers,
    models_table,
    pairs_table,
    transfer_pairs,
)
from zoo_sweep.report.tables import method_summary  # noqa: F401
from zoo_sweep.science import stats
from zoo_sweep.storage.store import Store
from zoo_sweep.urls import mask_url
from zoo_sweep.zoo.entry import chance_note

_NO_PAIRS = "nothing to draw: no measured pairs on this eval set yet (`zoo-sweep measure SPEC`)"
_NO_RESULTS = "nothing to draw: no finished single-teacher transfer results for this sweep yet"
_NO_CONTROLS = ("nothing to draw: no transfer run has a control run of the same student, seed and epoch in this sweep "
                '(controls = ["labels"] under [transfer])')
EMPTY = {"ck_vs_gap": _NO_PAIRS, "concentration": _NO_PAIRS, "delta_vs_gap": _NO_RESULTS,
         "gain_loss": _NO_RESULTS, "student_success": _NO_RESULTS, "student_properties": _NO_RESULTS,
         "control_by_epoch": _NO_CONTROLS}


def write_report(store: Store, sweep: str, eval_set: str, out_dir: str | Path, num_classes: int | None = None,
                 n_boot: int = stats.N_BOOT, seed: int = stats.SEED) -> list[Path]:
    """Write the report folder (HTML, PNG, CSV, Markdown); returns the files written."""
    return make_report(store, sweep, eval_set, out_dir, num_classes, n_boot, seed).files


def make_report(store: Store, sweep: str, eval_set: str, out_dir: str | Path, num_classes: int | None = None,
                n_boot: int = stats.N_BOOT, seed: int = stats.SEED) -> Report:
    """Compute every table and panel of a sweep's report and write them to ``out_dir``:
    ``report.html`` (self-contained: plots embedded as data URIs), the PNG plots, one CSV per table,
    ``summary.md`` and the raw ``models/pairs/transfers.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    out = _folder(out_dir)
    url = getattr(store, "url", "")
    rep = Report(sweep, eval_set, {"sweep": sweep, "eval_set": eval_set}, mask_url(url), num_classes)
    data = sections.read_data(store, sweep, eval_set, out, num_classes, n_boot, seed)
    rep.files += _write_rows(data, out)
    rep.sections += [section(data) for section in sections.SECTIONS]
    _note_empty_panels(rep, out)
    rep.findings = findings(data.pairs, data.summary, data.diffs, data.msum, data.held, data.ranks, data.convergence,
                            _chance_findings(data.models, num_classes, eval_set))
    _write_files(rep, out)
    return rep


def _folder(out_dir: str | Path) -> Path:
    from zoo_sweep.errors import UserError

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out} is a file; give a folder for the report") from None
    except OSError as e:
        raise UserError(f"cannot write the report to {out}: {e.strerror}") from None
    return out


def _write_rows(data: sections.ReportData, out: Path) -> list[Path]:
    """The rows the report starts from, as stored: models, pairs and final transfer rows."""
    files = []
    for name, df in (("models", data.models), ("pairs", data.pairs), ("transfers", data.raw)):
        p = out / f"{name}.csv"
        df.to_csv(p, index=False)
        files.append(p)
    return files


def _note_empty_panels(rep: Report, out: Path) -> None:
    for p in rep.panels:
        if p.path is None:
            (out / f"{p.key}.png").unlink(missing_ok=True)  # a stale plot of an earlier report in this folder
            p.caption = EMPTY.get(p.key, p.caption)


def _chance_findings(models, num_classes, eval_set) -> list[str]:
    """Models no better than chance head the findings: a warning, most often their preprocessing."""
    from zoo_sweep.data.sets import count_images

    if not num_classes or not len(models):
        return []
    n = count_images(eval_set, 0) or None
    notes = [(r.name, chance_note(float(r.accuracy), num_classes, n)) for r in models.itertuples()
             if r.accuracy == r.accuracy]  # NaN: not measured yet
    return [f"Check {name}: {note}." for name, note in notes if note]


def _write_files(rep: Report, out: Path) -> None:
    """Every table as CSV, then summary.md and report.html (which lists the files written before it)."""
    for t in rep.tables:
        p = out / f"{t.key}.csv"
        t.data.to_csv(p, index=False)
        rep.files.append(p)
    rep.files += [p.path for p in rep.panels if p.path]
    md = out / "summary.md"
    md.write_text(markdown(rep))
    rep.files.append(md)
    rep.html = write_html(rep, out / "report.html")
    rep.files.append(rep.html)
