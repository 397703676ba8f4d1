"""The results page: one self-contained static HTML file (inline CSS, PNG data URIs, no script, no URL).

``write_report`` gathers what exists under a results folder (``report.evidence`` for the tables,
``report.plots`` for the plots, ``report.provenance`` for where the results came from) and writes
``RESULTS/PROFILE/report/index.html``; a partial grid renders what it has and says what is missing.
Every row of a table carries its cell's keys as ``data-*`` attributes, so tests and scripts can find
each published cell on the page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nasaudit.config import Profile
from nasaudit.errors import NasauditError
from nasaudit.grid.jobs import Layout
from nasaudit.io import write_bytes
from nasaudit.report import plots
from nasaudit.report.evidence import (
    AGREES,
    DIFFERS,
    GRID_TABLES,
    NOT_IN_PROFILE,
    TABLES,
    TITLES,
    UNITS,
    TableEvidence,
    grid_table_evidence,
    label,
    table2_evidence,
    tolerance_derivation,
    tolerance_rule,
)
from nasaudit.report.provenance import Provenance, StageRecord, provenance
from nasaudit.report.tables import DESIGNS

MAX_LISTED = 20  # failed tasks listed per grid
RULE = (
    "<p><strong>Rule.</strong> A cell is within tolerance when |ours − paper| ≤ its tolerance "
    "(absolute, in the table's unit: percentage points of test accuracy; Table 2: percent of "
    "relative change). A significance mark agrees when both or neither table mark the cell "
    "(one-sided Welch test against the table's reference row, Benjamini–Hochberg per NAS "
    "algorithm at α = 0.05; Table 4: α = 0.05, uncorrected). A table <em>agrees</em> when every "
    "published cell is within tolerance and every mark agrees; a missing cell does not agree. "
    "<em>Incomplete</em>: every cell we have agrees, some are missing. Our cells beyond the "
    "paper's are shown but not judged.</p>"
)
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
padding:16px 24px;color:#222;background:#fff}
h1{font-size:24px;margin:8px 0}h2{font-size:19px;margin:28px 0 6px;border-bottom:2px solid #ddd}
h3{font-size:15px;margin:16px 0 4px}nav a{margin-right:12px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d0d0d0;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.within td.ours{background:#d7f0dc}tr.outside td.ours{background:#f7d4d0}
tr.missing td{color:#888;background:#f6f6f6}
td.agree{background:#d7f0dc}td.disagree{background:#f7d4d0}
.sig{font-weight:700;text-decoration:underline}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-weight:600;color:#fff}
.agrees{background:#2e8b57}.differs{background:#c0392b}.incomplete{background:#d68910}
.no-results{background:#7f8c8d}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:4px 10px;margin:6px 0}
details summary{cursor:pointer;color:#1f5fa8}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}.legend span{margin-right:14px}
"""


def write_report(
    profile: Profile,
    results: Path,
    *,
    out: Path | None = None,
    table2: Path | None = None,
    data_root: Path | None = None,
) -> Path:
    """Render the page for ``profile``'s results under ``results`` (grid jobs in ``results/PROFILE``);
    writes ``out/index.html`` (default ``results/PROFILE/report``) atomically and returns its path.

    ``table2`` is `nasaudit sensitivity`'s folder (default ``results/PROFILE/table2``), ``data_root``
    the data folder Figure 2 reads its clean images from.
    """
    layout = Layout.of(results, profile)
    out = Path(out) if out is not None else layout.root / "report"
    table2 = Path(table2) if table2 is not None else layout.root / "table2"
    if not layout.root.is_dir() and not table2.is_dir():
        raise NasauditError(
            f"no results of profile {profile.name!r} in {layout.root}: run a table first (`make table1 "
            f"PROFILE={profile.name}`), or point --results at the folder holding {profile.name}/"
        )
    evidence = [
        table2_evidence(profile, table2) if name == "table2" else grid_table_evidence(name, profile, layout)
        for name in TABLES
    ]
    figures = [
        _paper_figure("Figure 1: the best clean and the worst RLF (p = 50%) P-DARTS cells", _figure1,
                      results, profile, data_root),
        _paper_figure("Figure 2: clean training images and their poisoned versions", _figure2,
                      results, profile, data_root),
    ]  # fmt: skip
    page = render_page(profile.name, evidence, figures, provenance(profile, layout, GRID_TABLES))
    return write_bytes(out / "index.html", page.encode())


def render_page(
    profile: str,
    evidence: list[TableEvidence],
    figures: list[tuple[str, str | None, str]],
    record: Provenance,
) -> str:
    """The whole page: overall verdict, one section per table, the paper's figures, provenance."""
    nav = " ".join(f'<a href="#{e.name}">{_title(e.name)}</a>' for e in evidence)
    body = [
        f"<h1>nasaudit results against the paper: profile <code>{escape(profile)}</code></h1>",
        f'<nav>{nav} <a href="#figures">Figures</a> <a href="#provenance">Provenance</a></nav>',
        _verdict_section(evidence),
        *(_table_section(e) for e in evidence),
        _figures_section(figures),
        _provenance_section(record),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>nasaudit report: {escape(profile)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# --- verdict ----------------------------------------------------------------------------------------


def _verdict_section(evidence: list[TableEvidence]) -> str:
    rows = []
    for e in evidence:
        counts = e.counts()
        marks = f"{counts['marks_agree']} of {counts['cells']}" if "marks_agree" in counts else "–"
        rows.append(
            [
                f'<a href="#{e.name}">{_title(e.name)}</a>',
                _badge(e.verdict),
                f"{counts['present']} of {counts['cells']}",
                f"{counts['within']} of {counts['cells']}",
                marks,
                escape(tolerance_rule(e.name)),
            ]
        )
    agreeing = sum(e.verdict == AGREES for e in evidence)
    differing = [e.name for e in evidence if e.verdict == DIFFERS]
    summary = f"{agreeing} of {len(evidence)} tables agree with the paper"
    if differing:
        summary += f"; {', '.join(differing)} differ"
    return (
        '<section id="verdict"><h2>Verdict</h2>'
        f'<p class="overall"><strong>{escape(summary)}.</strong></p>'
        + _table(["table", "verdict", "cells we have", "within tolerance", "marks agree", "tolerance"], rows)
        + RULE
        + "<details><summary>How the tolerances were derived (expected_results/tolerances.toml)</summary>"
        f"<pre>{escape(tolerance_derivation())}</pre></details></section>"
    )


def _badge(verdict: str) -> str:
    return f'<span class="badge {verdict.replace(" ", "-")}">{escape(verdict)}</span>'


# --- one table ---------------------------------------------------------------------------------------


def _table_section(e: TableEvidence) -> str:
    counts = e.counts()
    parts = [
        f'<section id="{e.name}" class="table-section" data-table="{e.name}">',
        f"<h2>{_title(e.name)}: {escape(TITLES[e.name])} {_badge(e.verdict)}</h2>",
        f"<p>{counts['present']} of {counts['cells']} published cells have ours; {counts['within']} within "
        f"tolerance ({escape(tolerance_rule(e.name))})"
        + (f"; {counts['marks_agree']} significance marks agree" if "marks_agree" in counts else "")
        + ".</p>",
        *(f'<p class="note">{escape(note)}</p>' for note in e.notes),
        '<p class="legend"><span>green: within tolerance</span><span>red: outside</span>'
        '<span>grey: no result of ours</span><span class="sig">bold underlined</span> significant</p>',
    ]
    elsewhere = e.cells["missing"] == NOT_IN_PROFILE
    if not elsewhere.all():
        parts.append(_cells_table(e, e.cells[~elsewhere]))
    if elsewhere.any():
        parts.append(
            f"<details><summary>{int(elsewhere.sum())} published cells this profile does not run</summary>"
            + _cells_table(e, e.cells[elsewhere])
            + "</details>"
        )
    if len(e.extra):
        parts += [
            f"<h3>Our cells the paper does not print ({len(e.extra)}, not judged)</h3>",
            _extra_table(e),
        ]
    drawn = [
        (fig, caption)
        for fig, caption in (
            (plots.versus_paper(e), "Ours against the paper's per cell (± std), with the identity line."),
            (plots.delta_imp_by_budget(e), "ΔImp. per attack and budget for each algorithm."),
            (
                plots.metric_changes(e) if e.name == "table2" else None,
                "Mean change of each metric per attack.",
            ),
        )
        if fig is not None
    ]
    parts += [_figure(plots.data_uri(fig), caption) for fig, caption in drawn]
    parts.append("</section>")
    return "\n".join(parts)


def _cells_table(e: TableEvidence, cells: pd.DataFrame) -> str:
    """One row per published cell, its keys as ``data-*`` attributes; per-trial values on hover (the
    ``title`` of our value) and in the last column."""
    keys = e.keys
    marked = "significance_agrees" in cells.columns
    with_delta = "expected_delta_imp" in cells.columns
    unit = UNITS.get(e.name, "pp")
    headers = [*(_header(k) for k in keys), "paper", "ours", f"ours − paper ({unit})", "tolerance"]
    headers += ["ΔImp. paper", "ΔImp. ours"] if with_delta else []
    headers += ["marks"] if marked else []
    headers += ["n", "per-trial values" if e.name != "table2" else "per-architecture changes"]
    rows = []
    for cell in cells.to_dict("records"):
        present = not cell["missing"]
        state = "missing" if not present else "within" if cell["within"] else "outside"
        values = _trial_values(cell.get("ours_trials"), e.name)
        tds = [f"<td>{escape(label(k, cell[k]))}</td>" for k in keys]
        paper = _value(cell["expected"], cell.get("expected_std"), cell.get("expected_significant"))
        tds.append(f'<td class="num paper">{paper}</td>')
        if present:
            title = f' title="{escape(values)}"' if values else ""
            ours = _value(cell["ours"], cell.get("ours_std"), cell.get("ours_significant"))
            tds.append(f'<td class="num ours"{title}>{ours}</td>')
            tds.append(f'<td class="num">{cell["difference"]:+.2f}</td>')
        else:
            tds.append(f'<td class="ours">– ({escape(cell["missing"])})</td><td></td>')
        tds.append(f'<td class="num">±{cell["tolerance"]:g}</td>')
        if with_delta:
            tds.append(f'<td class="num">{_number(cell.get("expected_delta_imp"))}</td>')
            tds.append(f'<td class="num">{_number(cell.get("ours_delta_imp"))}</td>')
        if marked:
            agree = bool(cell["significance_agrees"])
            text = "agree" if agree else "disagree" if present else ""
            p = cell.get("ours_p_adjusted")
            how = "one-sided Welch" + (", BH-adjusted" if DESIGNS[e.name].correct else "")
            title = f' title="our p = {p:.3g} ({how})"' if _finite(p) else ""
            sign = "✓ " if agree else "✗ " if present else ""
            tds.append(f'<td class="{text or "none"}"{title}>{sign}{text}</td>')
        tds.append(f'<td class="num">{_count(cell)}</td>')
        tds.append(f"<td>{_details(values)}</td>")
        data = " ".join(f'data-{k.replace("_", "-")}="{escape(str(cell[k]))}"' for k in keys)
        rows.append(f'<tr class="cell {state}" {data}>{"".join(tds)}</tr>')
    return _table(headers, rows=None, raw_rows=rows, css="cells")


def _extra_table(e: TableEvidence) -> str:
    keys = [k for k in ("dataset", "search_dataset", "defense", "algorithm", "metric", "attack", "budget")
            if k in e.extra.columns]  # fmt: skip
    rows = []
    for cell in e.extra.to_dict("records"):
        values = _trial_values(cell.get("trials"), e.name)
        rows.append(
            [escape(label(k, cell[k])) for k in keys]
            + [_value(cell["mean"], cell.get("std"), cell.get("significant")),
               str(int(cell.get("n", 0) or 0)), _details(values)]
        )  # fmt: skip
    return _table([*(_header(k) for k in keys), "ours", "n", "values"], rows, css="extra")


def _value(mean: object, std: object, significant: object) -> str:
    text = _number(mean) + (f" ± {_number(std)}" if _finite(std) else "")
    return f'<span class="sig">{text}</span>' if significant is True or significant == 1.0 else text


def _number(value: object) -> str:
    return f"{float(value):.2f}" if _finite(value) else "–"  # type: ignore[arg-type]


def _finite(value: object) -> bool:
    return isinstance(value, int | float | np.number) and bool(np.isfinite(value))


def _count(cell: dict) -> str:
    n, planned = cell.get("ours_n"), cell.get("ours_planned")
    have = int(n) if _finite(n) else 0
    return f"{have} of {int(planned)}" if _finite(planned) and planned != have else str(have)


def _trial_values(trials: object, name: str) -> str:
    if not isinstance(trials, tuple) or not trials:
        return ""
    what = "architecture" if name == "table2" else "trial"
    return ", ".join(f"{what} {i}: {v:.2f}" for i, v in trials)


def _details(values: str) -> str:
    if not values:
        return ""
    return f"<details><summary>{values.count(':')} values</summary>{escape(values)}</details>"


def _header(key: str) -> str:
    return escape({"search_dataset": "search dataset", "budget": "p"}.get(key, key.replace("_", " ")))


def _title(name: str) -> str:
    return f"Table {name.removeprefix('table')}"


# --- figures and provenance ---------------------------------------------------------------------------


def _figure(uri: str, caption: str) -> str:
    return (
        f'<figure><img alt="{escape(caption)}" src="{uri}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _paper_figure(
    title: str, draw: Callable[[Path, Profile, Path | None], Figure], results: Path, profile: Profile,
    data_root: Path | None,
) -> tuple[str, str | None, str]:  # fmt: skip
    """(title, PNG data URI or None, why it is not drawn): a figure whose inputs are missing or
    unreadable is a note on the page, not a page that fails."""
    try:
        return title, plots.data_uri(draw(results, profile, data_root)), ""
    except NasauditError as exc:
        return title, None, str(exc)
    except OSError as exc:
        return title, None, f"cannot read its inputs ({exc})"


def _figure1(results: Path, profile: Profile, data_root: Path | None) -> Figure:
    from nasaudit.report.cells_figure import cells_figure, figure1_architectures

    return cells_figure(figure1_architectures(results, profile))


def _figure2(results: Path, profile: Profile, data_root: Path | None) -> Figure:
    from nasaudit.report.poison_figure import figure2_poisons, poison_figure

    poisons, dataset = figure2_poisons(results, profile, data_root)
    return poison_figure(poisons, dataset, n=6)


def _figures_section(figures: list[tuple[str, str | None, str]]) -> str:
    parts = ['<section id="figures"><h2>Figures</h2>']
    for title, uri, why in figures:
        parts.append(f"<h3>{escape(title)}</h3>")
        if uri is None:
            parts.append(f'<p class="note">not drawn: {escape(why)}</p>')
        else:
            parts.append(_figure(uri, title))
    parts.append("</section>")
    return "\n".join(parts)


def _provenance_section(record: Provenance) -> str:
    parts = [
        '<section id="provenance"><h2>Provenance</h2>',
        _table(
            None,
            [
                ["profile", f"<code>{escape(record.profile)}</code>"],
                ["code rendering this page", f"<code>{escape(record.commit)}</code>"],
            ],
        ),
        f"<details><summary>the profile's settings</summary><pre>"
        f"{escape(json.dumps(record.settings, indent=1, sort_keys=True))}</pre></details>",
        "<h3>Environments recorded in the outputs' manifests</h3>",
    ]
    if record.environments:
        headers = [*record.environments[0][0], "outputs"]
        parts.append(
            _table(
                headers,
                [
                    [escape("none" if v == "None" else v) for v in env.values()] + [str(n)]
                    for env, n in record.environments
                ],
            )
        )
    else:
        parts.append("<p>no finished grid task yet</p>")
    for grid in record.grids:
        parts.append(f"<h3>{_title(grid.name)} grid</h3>")
        if grid.error:
            parts.append(f'<p class="note">{escape(grid.error)}</p>')
            continue
        parts.append(
            _stage_table(grid.stages, grid.plan, f"nasaudit plan {grid.name} --profile {record.profile}")
        )
        for task, error in list(grid.failures.items())[:MAX_LISTED]:
            parts.append(f'<p class="note">FAILED <code>{escape(task)}</code>: {escape(error)}</p>')
        if len(grid.failures) > MAX_LISTED:
            parts.append(f"<p>… and {len(grid.failures) - MAX_LISTED} more failed tasks</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _stage_table(stages: Iterable[StageRecord], plan: dict | None, command: str) -> str:
    if plan is None:
        estimate_note = f"no recorded estimate: `{command}` (with the grid's --results) records one"
        device = ""
    else:
        device = str(plan.get("device", "?"))
        selection = plan.get("selection") or {}
        chosen = ", ".join(f"{k} {', '.join(v)}" for k, v in selection.items() if v)
        estimate_note = f"estimate recorded by `nasaudit plan` at {plan.get('created', '?')} on {device}" + (
            f" for {chosen}" if chosen else ""
        )
    rows = []
    for s in stages:
        spent = f"{_duration(s.seconds)} on {', '.join(s.devices)} ({s.timed} timed)" if s.timed else "–"
        estimate = (
            f"{_duration(s.estimated_seconds)} on {device} for the {s.estimated_tasks} tasks then left"
            if s.estimated_seconds is not None
            else "–"
        )
        rows.append(
            [
                s.stage,
                *(str(s.counts.get(k, 0)) for k in ("done", "running", "failed", "pending")),
                spent,
                estimate,
            ]
        )
    return _table(["stage", "done", "running", "failed", "pending", "compute spent", "estimated"], rows) + (
        f"<p>{escape(estimate_note)}. Spent: the seconds of each finished task's successful attempt as the "
        "grid runner recorded them; the estimate times each stage's networks and leaves out data loading and "
        "CPU-side work (see <code>nasaudit plan</code>).</p>"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _table(
    headers: list[str] | None,
    rows: list[list[str]] | None,
    *,
    raw_rows: list[str] | None = None,
    css: str = "",
) -> str:
    """A table from pre-escaped cell HTML (``rows``) or pre-rendered ``<tr>`` rows (``raw_rows``)."""
    head = (
        "" if headers is None else "<thead><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr></thead>"
    )
    body = raw_rows if raw_rows is not None else [
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows or []
    ]  # fmt: skip
    return f'<table class="{css}">{head}<tbody>{"".join(body)}</tbody></table>'
