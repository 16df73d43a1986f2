"""Writing the report: one self-contained HTML file (figures as base64 PNG, no external
resource) and a PDF (matplotlib's PdfPages: the table of figures of merit, then the figures)."""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._collect import RunData
from ._merit import Merit, Value

__all__ = ["format_value", "render_figures", "write_report"]

#: significant figures by unit (others: 4 significant digits)
_DECIMALS = {"%": 2, "Å": 3, "eV": 2, "mAh/g": 1}
#: rows of the figures-of-merit table per PDF page
_ROWS_PER_PAGE = 24


def format_value(value: Value, unit: str) -> str:
    """A figure of merit for people: fixed decimals by unit, a range as ``low–high``, '—' for none."""
    if value is None:
        return "—"
    if isinstance(value, tuple):
        text = "–".join(format_value(v, unit).removesuffix(f" {unit}") for v in value)
        return f"{text} {unit}" if unit else text
    if not math.isfinite(value):
        return "—"
    text = f"{value:.{_DECIMALS[unit]}f}" if unit in _DECIMALS else f"{value:.4g}"
    return f"{text} {unit}" if unit else text


def render_figures(runs: list[RunData], merits: list[Merit]) -> Iterator[tuple[str, str, Any]]:
    """``(section, caption, Figure)`` of the report, one at a time (``section`` "comparison" or
    a run uid): the comparison of the materials, then each run's analysis figures
    (:func:`strainstream.callbacks.plots.figure_for`) and, for an operando XRD charge, the
    phase fractions beside the voltage."""
    from strainstream.callbacks.plots import FIGURES, figure_for

    from ._figures import comparison_figure, phase_fraction_figure

    fig = comparison_figure(runs, merits)
    if fig is not None:
        yield "comparison", "The materials side by side: measured by the live analysis, the simulator's truth (◆) and the study's values (✕).", fig
    for run in runs:
        for name, entry in run.analyses.items():
            if name not in FIGURES:
                continue
            caption = (f"{name} of run {run.uid} ({run.material}), analysis version {entry.get('version')}, "
                       f"{entry.get('n_rows', 0)} events, {entry.get('status')}")
            yield run.uid, caption, figure_for(name, entry, arrays=run.arrays.get(name), start=run.start,
                                                 analyses=run.analyses)
            if name == "operando_xrd" and entry.get("n_rows"):
                yield run.uid, (f"phase fractions and voltage of run {run.uid} ({run.material}), analysis "
                                f"version {entry.get('version')}"), phase_fraction_figure(run, merits)


def _links(uid: str, analysis: str, server_uri: str | None) -> str:
    """HTML: the run uid (to its section in the report) and its nodes on the tiled server."""
    out = f'<a href="#run-{html.escape(uid)}" title="{html.escape(uid)}"><code>{html.escape(uid[:8])}</code></a>'
    if server_uri:
        base = server_uri.rstrip("/")
        out += (f' <a class="ext" href="{html.escape(base)}/metadata/{html.escape(uid)}">run</a>'
                f' <a class="ext" href="{html.escape(base)}/metadata/derived/{html.escape(uid)}/'
                f'{html.escape(analysis)}">results</a>')
    return out


_CSS = """
body { font-family: sans-serif; margin: 1.5em 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.off td.num.value { color: #a00; font-weight: bold; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; } a.ext { font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; }
"""


def _merit_rows(merits: list[Merit], server_uri: str | None, simulated: bool) -> str:
    rows = []
    for m in merits:
        cells = [html.escape(m.material), html.escape(m.label),
                 f'<td class="num value">{html.escape(format_value(m.value, m.unit))}</td>']
        if simulated:
            cells += [f'<td class="num">{html.escape(format_value(m.simulated, m.unit))}</td>',
                      f'<td class="num">{html.escape(format_value(m.sampled, m.unit))}</td>']
        cells += [html.escape(m.detail), _links(m.uid, m.analysis, server_uri),
                  f"{html.escape(m.analysis)} v{html.escape(str(m.version))}", f"<code>{html.escape(m.source)}</code>"]
        rows.append("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(rows)


def _png(fig, dpi: int) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table_pages(merits: list[Merit], simulated: bool, title: str, notes: list[str]):
    """PDF pages (Figures, A4 landscape) with the figures of merit as a table."""
    from matplotlib.figure import Figure

    header = ["material", "figure of merit", "measured"]
    if simulated:
        header += ["simulated", "as sampled"]
    header += ["at", "run", "analysis"]

    def short(text: str, n: int = 36) -> str:
        return text if len(text) <= n else text[:n - 1] + "…"

    rows = [[m.material, short(m.label, 62), format_value(m.value, m.unit)]
            + ([format_value(m.simulated, m.unit), format_value(m.sampled, m.unit)] if simulated else [])
            + [short(m.detail), m.uid[:8], f"{m.analysis} v{m.version}"] for m in merits]
    widths = [0.08, 0.33, 0.11] + ([0.11, 0.11] if simulated else []) + [0.2, 0.07, 0.1]
    total = sum(widths)
    widths = [w / total for w in widths]
    pages = max(1, math.ceil(len(rows) / _ROWS_PER_PAGE))
    for k in range(pages):
        fig = Figure(figsize=(11.69, 8.27))
        fig.text(0.03, 0.96, title + (f" — figures of merit ({k + 1}/{pages})" if pages > 1 else " — figures of merit"),
                 fontsize=13, weight="bold", va="top")
        if k == 0 and notes:
            fig.text(0.03, 0.92, "\n".join(notes), fontsize=7.5, va="top", wrap=True)
        ax = fig.add_axes((0.03, 0.04, 0.94, 0.78 if k == 0 and notes else 0.86))
        ax.set_axis_off()
        chunk = rows[k * _ROWS_PER_PAGE:(k + 1) * _ROWS_PER_PAGE]
        if chunk:
            table = ax.table(cellText=chunk, colLabels=header, colWidths=widths, loc="upper left",
                             cellLoc="left")
            table.auto_set_font_size(False)
            table.set_fontsize(7)
            for cell in table.get_celld().values():
                cell.PAD = 0.03  # of the cell's width (default 0.1: a wide column's text indented)
            table.scale(1.0, 1.35)
        else:
            ax.text(0, 1, "no figures of merit (no operando XRD, SXDM or TXM-XANES results)", va="top")
        yield fig


def write_report(runs: list[RunData], merits: list[Merit], out_dir: str | os.PathLike, *,
                 notes: list[str] | None = None, server_uri: str | None = None,
                 data_dir: str | os.PathLike | None = None, dashboard_url: str | None = None,
                 title: str | None = None, dpi: int = 80) -> dict[str, str]:
    """Write ``report.html`` and ``report.pdf`` into ``out_dir`` (created); their paths.

    Each file is written under a temporary name and renamed: never a half-written report
    under the real name.
    """
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    import strainstream

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from strainstream.study import MATERIALS

    materials = sorted({r.material for r in runs},
                       key=lambda m: (MATERIALS.index(m) if m in MATERIALS else len(MATERIALS), m))
    title = title or f"strainstream report — {', '.join(materials)}"
    simulated = any(m.simulated is not None or m.sampled is not None for m in merits)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    where = server_uri or (f"data directory {data_dir}" if data_dir else "the catalog")
    notes = list(notes or [])
    header_notes = [f"written {now} by strainstream {strainstream.__version__} (matplotlib "
                    f"{matplotlib.__version__}) from the live-analysis results in {where}"]
    if dashboard_url:
        header_notes.append(f"dashboard: {dashboard_url}")
    if simulated:
        header_notes.append("simulated: the property of the simulated material (open-circuit charge "
                            "soc 0→1, the whole particle); as sampled: what an exact analysis gives from "
                            "the recorded frames / pixels / voxels (strainstream.report._truth)")
    html_path, pdf_path = out / "report.html", out / "report.pdf"
    part_html, part_pdf = out / f".report.html.part-{os.getpid()}", out / f".report.pdf.part-{os.getpid()}"
    sections: dict[str, list[str]] = {}
    try:
        with PdfPages(part_pdf, metadata={"Title": title, "Creator": f"strainstream {strainstream.__version__}"}) as pdf:
            for page in _table_pages(merits, simulated, title, header_notes + notes):
                pdf.savefig(page)
            for section, caption, fig in render_figures(runs, merits):
                sections.setdefault(section, []).append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{_png(fig, dpi)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
                fig.supxlabel(caption, fontsize=7, color="0.4", x=0.01, ha="left")  # the PDF's caption
                pdf.savefig(fig)
        part_html.write_text(_html(title, runs, merits, sections, header_notes + notes, server_uri,
                                   simulated), encoding="utf-8")
        os.replace(part_pdf, pdf_path)
        os.replace(part_html, html_path)
    finally:
        for p in (part_html, part_pdf):
            if p.exists():
                p.unlink()
    return {"html": str(html_path), "pdf": str(pdf_path)}


def _html(title: str, runs: list[RunData], merits: list[Merit], sections: dict[str, list[str]],
          notes: list[str], server_uri: str | None, simulated: bool) -> str:
    e = html.escape
    head = ["material", "figure of merit", "measured"] + (["simulated", "as sampled"] if simulated else []) \
        + ["at", "run (uid → section; tiled)", "analysis", "source"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',  # no favicon request
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *(f'<p class="note">{e(n)}</p>' for n in notes),
        "<h2>Figures of merit</h2>",
        "<table id=\"merits\"><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>",
        _merit_rows(merits, server_uri, simulated), "</tbody></table>",
    ]
    if "comparison" in sections:
        parts += ["<h2>Comparison of the materials</h2>", *sections["comparison"]]
    parts.append("<h2>Runs</h2>")
    for run in runs:
        versions = ", ".join(f"{name} v{entry.get('version')} ({entry.get('status')})"
                             for name, entry in run.analyses.items())
        link = ""
        if server_uri:
            link = f' — <a class="ext" href="{e(server_uri.rstrip("/"))}/metadata/{e(run.uid)}">on the tiled server</a>'
        parts += [f'<section id="run-{e(run.uid)}"><h3>{e(run.material)} — {e(run.experiment)} — run '
                  f"<code>{e(run.uid)}</code></h3>",
                  f'<p class="note">analyses: {e(versions)}{link}</p>', *sections.get(run.uid, []), "</section>"]
    parts.append("</body></html>")
    return "\n".join(parts)
