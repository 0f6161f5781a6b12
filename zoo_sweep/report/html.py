"""One self-contained HTML page for a report: plots embedded as base64 data URIs, no scripts, no network."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from zoo_sweep.report.parts import Panel, ReportTable
from zoo_sweep.report.queries import SQL

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #1d2330;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 34px 0 10px; border-bottom: 2px solid #dde2ea;
     padding-bottom: 4px; } h3 { font-size: 15px; margin: 22px 0 6px; }
.meta { color: #5b6577; font-size: 13px; margin-bottom: 16px; }
.findings { background: #eef4fb; border-left: 4px solid #3b7dd8; padding: 10px 18px; font-size: 14px; }
.findings li { margin: 4px 0; }
figure { margin: 14px 0 18px; } figure img { max-width: 100%; border: 1px solid #e3e6ec; }
figcaption, .note { color: #5b6577; font-size: 12.5px; margin-top: 4px; }
.empty { color: #8a5a00; background: #fff6e0; padding: 8px 12px; font-size: 13px; }
table { border-collapse: collapse; font-size: 12.5px; margin: 4px 0; }
th, td { border: 1px solid #dde2ea; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f2f6; } td.txt, th.txt { text-align: left; }
.scroll { overflow-x: auto; }
details { margin: 4px 0 12px; font-size: 12px; } summary { cursor: pointer; color: #3b7dd8; }
pre { background: #f4f5f7; padding: 8px 10px; white-space: pre-wrap; word-break: break-all; font-size: 11.5px; }
p.text { font-size: 14px; }
"""


def write_html(rep, path: str | Path) -> Path:
    """Render a ``report.Report`` to ``path``."""

    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>zoo-sweep report: {e(rep.sweep)}</title>"
             f"<style>{CSS}</style></head><body><main>",
             f"<h1>Sweep {e(rep.sweep)}</h1>",
             f"<div class='meta'>eval set <code>{e(rep.eval_set)}</code> · store <code>{e(rep.db_url)}</code> · "
             f"{e(time.strftime('%Y-%m-%d %H:%M'))} · numbers are points / percent of the eval set; intervals are "
             f"95 %, each table's note says over what (students or pairs)</div>",
             "<h2>Findings</h2><ul class='findings'>" + "".join(f"<li>{e(s)}</li>" for s in rep.findings) + "</ul>"]
    for heading, items in rep.sections:
        parts.append(f"<h2>{e(heading)}</h2>")
        for it in items:
            if isinstance(it, str):
                parts.append(f"<p class='text'>{e(it)}</p>")
            elif isinstance(it, Panel):
                if it.path and Path(it.path).exists():
                    data = base64.b64encode(Path(it.path).read_bytes()).decode()
                    parts.append(f"<figure id='{e(it.key)}'><img alt='{e(it.title)}' "
                                 f"src='data:image/png;base64,{data}'>"
                                 f"<figcaption><b>{e(it.title)}.</b> {e(it.caption)} "
                                 f"(<code>{e(Path(it.path).name)}</code>)</figcaption></figure>")
                else:
                    parts.append(f"<div class='empty' id='{e(it.key)}'><b>{e(it.title)}:</b> {e(it.caption)}</div>")
            elif isinstance(it, ReportTable):
                parts.append(f"<h3 id='{e(it.key)}'>{e(it.title)}</h3>")
                parts.append(_table_html(it.view))
                if it.note:
                    parts.append(f"<div class='note'>{e(it.note)}</div>")
                cmds = "\n\n".join(rep.sql_command(k) for k in it.sql)
                shown = "\n\n".join(
                    f"-- {k}  ({', '.join(f'{p} = {rep.params[p]!r}' for p in rep.params if ':' + p in SQL[k])})\n"
                    f"{_indent(SQL[k])}" for k in it.sql)
                parts.append(f"<details><summary>SQL behind this table ({e(', '.join(it.sql))}); CSV: "
                             f"<code>{e(it.key)}.csv</code></summary><pre>{e(cmds)}</pre><pre>{e(shown)}</pre></details>")
    files = ", ".join(sorted({Path(p).name for p in rep.files}))
    parts.append(f"<h2>Files</h2><p class='note'>Beside this page: {e(files)}. Every table of the store as Parquet: "
                 f"<code>zoo-sweep export --out DIR</code> (columns documented in the README).</p>")
    parts.append("</main></body></html>")
    out = Path(path)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _indent(sql: str) -> str:
    lines = [ln for ln in sql.strip("\n").splitlines()]
    pad = min((len(ln) - len(ln.lstrip()) for ln in lines[1:] if ln.strip()), default=0)
    return "\n".join([lines[0].strip()] + [ln[pad:] for ln in lines[1:]])


def _table_html(df) -> str:
    e = html.escape
    if df.empty:
        return "<div class='empty'>(none yet)</div>"
    txt = {c for c in df.columns if not all(_numeric(v) for v in df[c] if v != "")}
    head = "".join(f"<th class='{'txt' if c in txt else ''}'>{e(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td class='{'txt' if c in txt else ''}'>{e(str(v))}</td>"
                                    for c, v in zip(df.columns, row)) + "</tr>" for row in df.itertuples(index=False))
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _numeric(v) -> bool:
    s = str(v).split(" [")[0]
    try:
        float(s)
        return True
    except ValueError:
        return False
