"""HTML tables for `snakemake --report` (Snakemake shows HTML results inline, CSV files only as downloads)
and the report's landing page: the study's question, each phase's verdict and gate table, the design check
and the runs tables. Plain HTML, escaped; standard library only."""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path

STYLE = """<style>
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:1.2em;color:#111}
table.ma{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1.2em 0}
table.ma th,table.ma td{border:1px solid #bbb;padding:0.2em 0.5em;text-align:left;vertical-align:top}
table.ma th{background:#eef}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.PASS{color:#060;font-weight:bold}.FAIL{color:#a00;font-weight:bold}.INSUFFICIENT{color:#a60;font-weight:bold}
</style>"""
# The report app centres its content pane, which cuts off the top (and left) of a page larger than the
# window: the landing page asks for it to start at the top (only while the landing page is shown).
# Its text column is narrow (a rule graph beside it): the landing page's tables get more room.
LANDING_STYLE = ("<style>div.h-screen.overflow-auto{align-items:flex-start !important;justify-content:flex-start !important}"
                 "div.prose.max-w-lg{max-width:64rem !important}table.ma td{min-width:4em}</style>")

# the runs table's columns on the landing page (all columns are in the phase's own runs table)
RUN_COLUMNS = ["role", "model", "arm", "variant", "seed", "status", "final_val_loss", "best_val_loss",
               "eff_rank_mean", "wall_time_s"]


def e(x) -> str:
    return html.escape("" if x is None else str(x))


def _cell(v) -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "<td></td>"
    try:
        f = float(v)
    except (TypeError, ValueError):
        text = str(v)
        cls = f' class="{text}"' if text in ("PASS", "FAIL", "INSUFFICIENT") else ""
        return f"<td{cls}>{e(text)}</td>"
    text = str(v).strip()
    if not text.lstrip("-").isdigit():  # an integer stays as written; other numbers to 6 significant digits
        text = f"{f:.6g}"
    return f'<td class="num">{e(text)}</td>'


def table_html(headers: list[str], rows: list[list], table_id: str = "") -> str:
    ident = f' id="{e(table_id)}"' if table_id else ""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table class="ma"{ident}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def read_csv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return (rows[0], rows[1:]) if rows else ([], [])


def csv_table_html(path: str | Path, columns: list[str] | None = None, table_id: str = "") -> str:
    headers, rows = read_csv(path)
    if columns:
        idx = [headers.index(c) for c in columns if c in headers]
        headers, rows = [headers[i] for i in idx], [[r[i] if i < len(r) else "" for i in idx] for r in rows]
    if not rows:
        return "<p>(no rows)</p>"
    return table_html(headers, rows, table_id)


def page(title: str, body: str) -> str:
    """A whole HTML document (a report entry opens it on its own)."""
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{e(title)}</title>{STYLE}</head>\n'
            f"<body>\n<h2>{e(title)}</h2>\n{body}\n</body></html>\n")


def csv_page(path: str | Path, title: str, note: str = "", table_id: str = "table") -> str:
    return page(title, (f"<p>{e(note)}</p>\n" if note else "") + csv_table_html(path, table_id=table_id))


def verdict_word(passed) -> str:
    return {True: "PASS", False: "FAIL"}.get(passed, "INSUFFICIENT")


def gates_table_html(gates: dict, table_id: str = "") -> str:
    rows = [[g.get("name"), g.get("kind", ""), g.get("verdict"), g.get("claim", g.get("threshold", "")),
             g.get("observed", ""), g.get("detail", "")] for g in gates.get("gates", [])]
    return table_html(["gate", "kind", "verdict", "claim tested", "observed", "detail"], rows, table_id)


def gates_summary(gates: dict) -> str:
    verdicts = [g.get("verdict") for g in gates.get("gates", [])]
    word = verdict_word(gates.get("passed"))
    return (f'<span class="{word}">{word}</span> ({verdicts.count("PASS")}/{len(verdicts)} gates PASS)')


def gates_page(gates: dict, phase: str) -> str:
    return page(f"{phase}: gates", f"<p>Verdict of {e(phase)}: {gates_summary(gates)}</p>\n"
                + gates_table_html(gates, "gates"))


def landing_html(title: str, summary: str, phases: list[dict], design_csv: str | Path | None = None,
                 tiny: bool = False) -> str:
    """The report's first page (an HTML fragment the landing text includes).

    phases: [{"phase", "question", "gates" (gates.json as a dict), "runs_csv" (path), "selection" (dict or None)}]
    """
    out = [f'<div id="study-landing">{STYLE}{LANDING_STYLE}<h2>{e(title)}</h2>']
    if tiny:
        out.append("<p><em>The CPU twin: tiny models on the stdlib corpus. It exercises the pipeline; its "
                   "numbers answer no research question.</em></p>")
    out.append(f'<p id="study-question"><strong>The question.</strong> {e(summary)}</p>')
    out.append("<h3>Verdicts</h3>")
    out.append(table_html(["phase", "verdict", "question"],
                          [[p["phase"], verdict_word(p["gates"].get("passed")), p["question"]] for p in phases],
                          "verdicts"))
    for p in phases:
        out.append(f'<h3 id="phase-{e(p["phase"])}">{e(p["phase"])}: {gates_summary(p["gates"])}</h3>')
        out.append(f"<p>{e(p['question'])}</p>")
        sel = p.get("selection")
        if sel and sel.get("arm"):
            out.append(f"<p>Runs the arm selected from the earlier phase: <strong>{e(sel['arm'])}</strong> "
                       f"({e(sel.get('variant'))}).</p>")
        for name, r in ((sel or {}).get("selections") or {}).items():  # several named selections
            if r.get("arm"):
                out.append(f"<p>Selection {e(name)}: <strong>{e(r['arm'])}</strong> ({e(r.get('variant'))}).</p>")
        out.append(gates_table_html(p["gates"], f"gates-{p['phase']}"))
        out.append(f"<h4>{e(p['phase'])}: runs</h4>")
        out.append(csv_table_html(p["runs_csv"], RUN_COLUMNS, f"runs-{p['phase']}"))
    if design_csv is not None and Path(design_csv).exists():
        out.append("<h3>Design check (before any run)</h3>")
        out.append("<p>Per phase and statistical gate: the Holm family, the power at the gate's threshold "
                   "with the configured seeds, the seeds for 80% power, and the GPU-hours and cost.</p>")
        out.append(csv_table_html(design_csv, table_id="design"))
    out.append("<p>Every table and plot of each phase is in the report's categories (left); the tables "
               "are also downloadable as CSV.</p></div>")
    return "\n".join(out) + "\n"
