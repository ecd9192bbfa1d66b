"""Self-contained HTML reports: the verdict matrix of a run, and the interop grids.

`run_page` renders one page for `python -m conformance run --html FILE`: the verdict
matrix (case by IUT) filterable by area, by verdict and by case id; each non-conforming
cell opens to its detail, the counters that moved, its ladder diagram (read from the
tester's `.ladder.txt`) and links to its pcap and ladder; a diff of two IUTs the reader
chooses; and the environment of each IUT. `interop_page` renders the interop matrix of
`python -m conformance interop --html FILE`: one grid per scenario, client rows by
server columns, failed cells opening to their detail, figures and artefacts.

A page needs no server and no network: CSS and JS are inline, and artefact links are
paths relative to the page. Every piece of text from a run (case details, counters,
ladders, environment values, paths) is escaped here, and nothing is built from text in
the browser: the script only shows and hides what the page already holds, and keeps the
reader's choices in the address's fragment (`#area=dss&verdict=deviates&left=stack-v1&
right=kernel`), so a filtered view can be linked to.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from conformance.model import Case, Result, Verdict

if TYPE_CHECKING:
    from conformance.interop.cell import CellResult

# What a matrix cell says, and the class that colours it.
LABEL = {
    Verdict.CONFORMS: "conforms",
    Verdict.DEVIATES: "deviates",
    Verdict.NOT_APPLICABLE: "n/a",
    Verdict.ERROR: "error",
}
NON_CONFORMING = (Verdict.DEVIATES, Verdict.ERROR)
INTEROP_VERDICTS = ("pass", "fail", "n/a")
LADDER_LIMIT = 400  # ladder lines drawn per cell; the rest stays in the file
# One line of `Tester.ladder()`: offset, direction, interface, then the segment.
_LADDER_LINE = re.compile(r"^\s*(?P<time>[+-]?\d+\.\d+)\s+tester (?P<dir>[→←]) IUT\s+"
                          r"(?P<ifname>\S+)\s+(?P<rest>.*)$")  # fmt: skip
_SEGMENT = re.compile(r"^(?P<tuple>\S+ > \S+)\s+(?P<flags>\S+)\s+(?P<numbers>seq \d+ ack \d+ "
                      r"len \d+)\s+(?P<options>.*)$")  # fmt: skip


def esc(value: object) -> str:
    """Text or attribute value, escaped (quotes too)."""
    return html.escape(str(value), quote=True)


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", value)


def _verdict_class(verdict: str) -> str:
    return "v-" + _slug(verdict)


@dataclass(frozen=True)
class Page:
    """What every page carries besides its body."""

    title: str
    summary: str  # the run's one-line summary
    generated: str  # when (text as given)
    command: str  # the command line that made it
    environments: Mapping[str, Mapping[str, str]]  # per IUT
    harness: Mapping[str, str]  # the machine the harness ran on
    skipped: Mapping[str, str]  # IUT -> why it did not run


# -- artefacts --


def artifact_href(path: str, page_dir: Path) -> str:
    """A link to an artefact, relative to the page's directory, percent-encoded (so
    no scheme, quote or space survives), then escaped for an attribute."""
    target = os.path.abspath(path)
    relative = os.path.relpath(target, os.path.abspath(page_dir))
    return esc(quote(Path(relative).as_posix()))


def _artifact_links(paths: Iterable[str], page_dir: Path) -> str:
    items = []
    for path in paths:
        name = Path(path).name + ("/" if os.path.isdir(path) else "")
        kind = "pcap" if name.endswith(".pcap") else "ladder" if name.endswith(".txt") else "file"
        missing = "" if os.path.exists(path) else ' <span class="missing">(missing)</span>'
        items.append(
            f'<li><a href="{artifact_href(path, page_dir)}" class="artifact artifact-{kind}">'
            f"{esc(name)}</a>{missing}</li>"
        )
    if not items:
        return '<p class="muted">no artefacts kept</p>'
    return f'<ul class="artifacts">{"".join(items)}</ul>'


def _read_ladder(paths: Iterable[str]) -> str | None:
    for path in paths:
        if path.endswith(".ladder.txt"):
            try:
                return Path(path).read_text(errors="replace")
            except OSError:
                return None
    return None


def ladder_html(text: str) -> str:
    """The tester's ladder as a diagram: the tester's lifeline on the left, the IUT's on
    the right, one arrow per segment labelled with its flags, numbers and MPTCP options.
    Lines that do not parse are kept as text."""
    lines = text.splitlines()
    rows = []
    for line in lines[:LADDER_LIMIT]:
        match = _LADDER_LINE.match(line)
        if match is None:
            rows.append(f'<tr class="raw"><td colspan="4"><code>{esc(line)}</code></td></tr>')
            continue
        direction = "to-iut" if match["dir"] == "→" else "to-tester"
        segment = _SEGMENT.match(match["rest"])
        if segment:
            label = (
                f'<span class="seg" title="{esc(segment["tuple"])}"><b>{esc(segment["flags"])}'
                f"</b> {esc(segment['numbers'])}</span>"
                f'<span class="opts">{esc(segment["options"])}</span>'
            )
        else:
            label = f'<span class="seg">{esc(match["rest"])}</span>'
        rows.append(
            f'<tr class="arrow {direction}"><td class="t">{esc(match["time"])}</td>'
            f'<td class="if">{esc(match["ifname"])}</td>'
            f'<td class="line"><div class="label">{label}</div></td><td class="end"></td></tr>'
        )
    more = ""
    if len(lines) > LADDER_LIMIT:
        more = f'<p class="muted">{len(lines) - LADDER_LIMIT} more lines in the ladder file</p>'
    return (
        '<table class="ladder"><thead><tr><th>s</th><th>if</th>'
        '<th><div class="lifelines"><span>tester</span><span>IUT</span></div></th><th></th>'
        "</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{more}"
    )


# -- the run page --


def run_page(
    cases: Sequence[Case],
    iuts: Sequence[str],
    results: Iterable[Result],
    page: Page,
    output: Path,
) -> str:
    """The whole page for a run; `output` is where it will be written (links are
    relative to its directory)."""
    index = {(r.case_id, r.iut): r for r in results}
    page_dir = output.parent
    areas = list(dict.fromkeys(c.area for c in cases))
    counts = Counter(r.verdict for r in index.values())
    body = [
        _header(page),
        '<nav><a href="#matrix">matrix</a> · <a href="#diff">diff</a> · '
        '<a href="#environment">environment</a></nav>',
        '<section id="matrix"><h2>Verdict matrix</h2>',
        _filters(
            "area",
            "every area",
            areas,
            [(LABEL[v], counts[v]) for v in Verdict],
            text_filter=True,
        ),
        _matrix(cases, iuts, index, page_dir),
        "</section>",
        _diff_section(cases, iuts, index),
        _environment_section(page, iuts),
    ]
    return _document(page.title, "\n".join(body))


def _header(page: Page) -> str:
    return (
        f"<header><h1>{esc(page.title)}</h1>"
        f'<p class="summary" id="summary">{esc(page.summary)}</p>'
        f'<p class="muted">generated {esc(page.generated)} by <code>{esc(page.command)}</code>'
        "</p></header>"
    )


def _filters(
    group: str,
    every: str,
    groups: Sequence[str],
    verdicts: Sequence[tuple[str, int]],
    *,
    text_filter: bool = False,
) -> str:
    options = "".join(f'<option value="{esc(g)}">{esc(g)}</option>' for g in groups)
    boxes = "".join(
        f'<label class="chip {_verdict_class(name)}"><input type="checkbox" '
        f'class="verdict-filter" value="{esc(name)}" checked> {esc(name)} '
        f'<span class="n">{n}</span></label>'
        for name, n in verdicts
    )
    search = (
        '<label>case <input type="search" id="text-filter" placeholder="id contains…"></label>'
        if text_filter
        else ""
    )
    return (
        f'<div class="filters" id="filters">'
        f'<label>{esc(group)} <select id="group-filter" data-key="{esc(group)}">'
        f'<option value="">{esc(every)}</option>{options}</select></label>'
        f'<span class="verdicts">{boxes}</span>{search}'
        '<span id="shown-count" class="muted"></span>'
        '<button type="button" id="expand-all">open all shown</button>'
        '<button type="button" id="collapse-all">close all</button></div>'
    )


def _matrix(
    cases: Sequence[Case],
    iuts: Sequence[str],
    index: Mapping[tuple[str, str], Result],
    page_dir: Path,
) -> str:
    columns = 3 + len(iuts)
    head = "".join(f"<th>{esc(iut)}{_column_counts(iut, index)}</th>" for iut in iuts)
    rows = []
    for n, case in enumerate(cases):
        row_id = f"case-{n}"
        cells, details, verdicts = [], [], []
        for column, iut in enumerate(iuts):
            result = index.get((case.id, iut))
            if result is None:
                cells.append(f'<td class="cell v-none" data-iut="{esc(iut)}">&ndash;</td>')
                continue
            label = LABEL[result.verdict]
            verdicts.append(label)
            attributes = _cell_attributes(label, iut=iut)
            if result.verdict in NON_CONFORMING or result.artifacts:
                # a conforming cell expands too when its artefacts were kept
                # (`run --keep-all-artifacts`): its ladder, to set beside another IUT's
                detail_id = f"detail-{n}-{column}"  # ids from positions: names may clash
                cells.append(
                    f'<td {attributes}><button type="button" '
                    f'class="toggle" aria-expanded="false" aria-controls="{detail_id}">'
                    f"{esc(label)}</button></td>"
                )
                details.append(
                    f'<tr class="detail" id="{detail_id}" data-parent="{row_id}" hidden>'
                    f'<td colspan="{columns}">{_cell_detail(case, iut, result, page_dir)}</td></tr>'
                )
            else:
                title = f"{result.detail} " if result.detail else ""
                title += f"({result.duration_s:.2f} s)"
                cells.append(f'<td {attributes} title="{esc(title)}">{esc(label)}</td>')
        rows.append(
            f'<tr class="case item" id="{row_id}" data-group="{esc(case.area)}" '
            f'data-verdicts="{esc(" ".join(dict.fromkeys(verdicts)))}" data-key="{esc(case.id)}">'
            f'<td class="id" title="{esc(case.expected)}">{esc(case.id)}</td>'
            f"<td>{esc(case.area)}</td>"
            f'<td class="req">{esc(case.reference)}</td>{"".join(cells)}</tr>' + "".join(details)
        )
    return (
        '<table class="matrix" id="matrix-table"><thead><tr><th>case</th><th>area</th>'
        f"<th>requirement</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _cell_attributes(verdict: str, *, iut: str | None = None) -> str:
    """A verdict cell's attributes: its colour, and the verdict the filters read."""
    iut_attribute = f' data-iut="{esc(iut)}"' if iut is not None else ""
    return f'class="cell {_verdict_class(verdict)}" data-verdict="{esc(verdict)}"{iut_attribute}'


def _column_counts(iut: str, index: Mapping[tuple[str, str], Result]) -> str:
    counts = Counter(r.verdict for (_, name), r in index.items() if name == iut)
    parts = [
        f'<span class="{_verdict_class(LABEL[v])}">{counts[v]} {esc(LABEL[v])}</span>'
        for v in Verdict
        if counts[v]
    ]
    return f'<div class="counts">{" ".join(parts)}</div>'


def _cell_detail(case: Case, iut: str, result: Result, page_dir: Path) -> str:
    counters = ""
    if result.counters:
        counters = (
            '<table class="counters"><caption>counters that moved</caption>'
            + "".join(
                f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in result.counters.items()
            )
            + "</table>"
        )
    ladder_text = _read_ladder(result.artifacts)
    if ladder_text is not None:
        ladder = ladder_html(ladder_text)
    elif result.artifacts:
        ladder = '<p class="muted">the ladder file is missing</p>'
    else:
        ladder = '<p class="muted">no ladder: the run kept no artefacts</p>'
    return (
        f'<div class="panel {_verdict_class(LABEL[result.verdict])}">'
        f"<h3>{esc(iut)}: {esc(LABEL[result.verdict])} — {esc(case.id)}</h3>"
        f'<p class="expected"><b>expected</b> ({esc(case.reference)}): {esc(case.expected)}</p>'
        f'<p class="seen"><b>seen</b>: <span class="detail-text">{esc(result.detail)}</span></p>'
        f'<p class="muted">took {result.duration_s:.2f} s</p>{counters}'
        f"{_artifact_links(result.artifacts, page_dir)}"
        f'<details class="ladder-box" open><summary>ladder</summary>{ladder}</details></div>'
    )


def _diff_section(
    cases: Sequence[Case], iuts: Sequence[str], index: Mapping[tuple[str, str], Result]
) -> str:
    """One table per ordered pair of IUTs (the script shows the chosen one); the first
    shown is stack-v1 against the kernel when both ran, else the first two IUTs."""
    if len(iuts) < 2:
        return (
            '<section id="diff"><h2>Diff</h2><p class="muted">one IUT in this run: '
            "nothing to compare</p></section>"
        )
    left, right = ("stack-v1", "kernel") if {"stack-v1", "kernel"} <= set(iuts) else iuts[:2]
    tables = []
    for a in iuts:
        for b in iuts:
            if a == b:
                continue
            rows = []
            for case in cases:
                ra, rb = index.get((case.id, a)), index.get((case.id, b))
                if ra is None or rb is None or ra.verdict == rb.verdict:
                    continue
                rows.append(
                    f'<tr data-key="{esc(case.id)}"><td class="id" title="{esc(case.expected)}">'
                    f"{esc(case.id)}</td>{_diff_cell(ra)}{_diff_cell(rb)}</tr>"
                )
            hidden = "" if (a, b) == (left, right) else " hidden"
            body = "".join(rows) or (
                f'<tr class="none"><td colspan="3">no difference between {esc(a)} and '
                f"{esc(b)}</td></tr>"
            )
            tables.append(
                f'<table class="diff" data-left="{esc(a)}" data-right="{esc(b)}"{hidden}>'
                f"<caption>{len(rows)} case(s) where {esc(a)} and {esc(b)} differ</caption>"
                f"<thead><tr><th>case</th><th>{esc(a)}</th><th>{esc(b)}</th></tr></thead>"
                f"<tbody>{body}</tbody></table>"
            )

    def select(name: str, chosen: str) -> str:
        options = "".join(
            f'<option value="{esc(i)}"{" selected" if i == chosen else ""}>{esc(i)}</option>'
            for i in iuts
        )
        return f'<select id="diff-{name}">{options}</select>'

    return (
        '<section id="diff"><h2>Diff between two IUTs</h2><div class="filters">'
        f"<label>left {select('left', left)}</label> "
        f"<label>right {select('right', right)}</label></div>"
        '<p id="diff-same" class="muted" hidden>choose two different IUTs</p>'
        f"{''.join(tables)}</section>"
    )


def _diff_cell(result: Result) -> str:
    label = LABEL[result.verdict]
    detail = f'<div class="detail-text">{esc(result.detail)}</div>' if result.detail else ""
    return f'<td class="{_verdict_class(label)}"><b>{esc(label)}</b>{detail}</td>'


def _environment_section(page: Page, names: Sequence[str]) -> str:
    columns = [*names, *(n for n in page.environments if n not in names)]
    keys = list(dict.fromkeys(k for n in columns for k in page.environments.get(n, {})))
    head = "".join(f"<th>{esc(n)}</th>" for n in columns)
    rows = "".join(
        f"<tr><th>{esc(key)}</th>"
        + "".join(f"<td>{esc(page.environments.get(n, {}).get(key, ''))}</td>" for n in columns)
        + "</tr>"
        for key in keys
    )
    harness = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in page.harness.items()
    )
    skipped = ""
    if page.skipped:
        skipped = "<h3>Not run here</h3><ul>" + "".join(
            f"<li><b>{esc(n)}</b>: {esc(why)}</li>" for n, why in page.skipped.items()
        ) + "</ul>"  # fmt: skip
    return (
        '<section id="environment"><h2>Environment</h2>'
        f'<table class="env" id="iut-environment"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        f'<h3>Harness</h3><table class="env" id="harness-environment">{harness}</table>'
        f"{skipped}</section>"
    )


# -- the interop page --


def interop_page(
    results: Sequence[CellResult],
    impls: Sequence[str],
    page: Page,
    output: Path,
    *,
    descriptions: Mapping[str, str],
    cell_text: Callable[[CellResult], str],
) -> str:
    """One grid per scenario (client rows, server columns); `descriptions` says what
    each scenario's cells must show to pass, `cell_text` a cell's verdict and figure."""
    page_dir = output.parent
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    counts = Counter(r.verdict for r in results)
    grids = []
    for n, name in enumerate(scenarios):
        by_pair = {(r.client, r.server): r for r in results if r.scenario == name}
        verdicts = " ".join(dict.fromkeys(r.verdict for r in by_pair.values()))
        rows, details = [], []
        for row, client in enumerate(impls):
            cells = []
            for column, server in enumerate(impls):
                result = by_pair.get((client, server))
                if result is None:
                    cells.append('<td class="cell v-none">&ndash;</td>')
                    continue
                attributes = _cell_attributes(result.verdict)
                text = esc(cell_text(result))
                figures = ", ".join(f"{k} {_figure(v)}" for k, v in result.figures.items())
                if result.verdict == "fail":
                    detail_id = f"detail-{n}-{row}-{column}"
                    cells.append(
                        f'<td {attributes}><button type="button" class="toggle" '
                        f'aria-expanded="false" aria-controls="{detail_id}">{text}</button></td>'
                    )
                    details.append(
                        f'<div class="detail panel v-fail" id="{detail_id}" '
                        f'data-parent="scenario-{n}" hidden>'
                        f"<h3>{esc(name)}: {esc(client)} → {esc(server)}: fail</h3>"
                        f'<p class="seen"><span class="detail-text">{esc(result.detail)}</span></p>'
                        f"{_known_defect(result.known_defect)}"
                        f"{_figures(result.figures)}"
                        f'<p class="muted">took {result.duration_s:.1f} s</p>'
                        f"{_interop_artifacts(result.artifacts, page_dir)}</div>"
                    )
                else:
                    title = " ".join(x for x in (result.detail, figures) if x)
                    cells.append(f'<td {attributes} title="{esc(title)}">{text}</td>')
            rows.append(f'<tr><th class="client">{esc(client)} →</th>{"".join(cells)}</tr>')
        head = "".join(f"<th>{esc(s)}</th>" for s in impls)
        grids.append(
            f'<section class="scenario item" id="scenario-{n}" data-group="{esc(name)}" '
            f'data-verdicts="{esc(verdicts)}" data-key="{esc(name)}">'
            f'<h3>{esc(name)}</h3><p class="muted">{esc(descriptions.get(name, ""))}</p>'
            f'<table class="grid"><thead><tr><th>client \\ server</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{''.join(details)}</section>"
        )
    body = [
        _header(page),
        '<nav><a href="#grids">grids</a> · <a href="#environment">environment</a></nav>',
        '<section id="grids"><h2>Interop matrix</h2>',
        _filters(
            "scenario", "every scenario", scenarios, [(v, counts[v]) for v in INTEROP_VERDICTS]
        ),
        *grids,
        "</section>",
        _environment_section(page, impls),
    ]
    return _document(page.title, "\n".join(body))


def _figure(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _figures(figures: Mapping[str, Any]) -> str:
    if not figures:
        return ""
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_figure(v))}</td></tr>" for k, v in figures.items()
    )
    return f'<table class="counters"><caption>figures</caption>{rows}</table>'


def _interop_artifacts(paths: Sequence[str], page_dir: Path) -> str:
    """A failed cell keeps one directory (pcaps, both ends' reports): link it and each
    file in it."""
    files: list[str] = []
    for path in paths:
        files.append(path)
        if os.path.isdir(path):
            files.extend(str(p) for p in sorted(Path(path).iterdir()) if p.is_file())
    return _artifact_links(files, page_dir)


# -- the document --


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        "<noscript><style>tr.detail,div.detail{display:revert!important}</style></noscript>"
        f"</head><body>\n{body}\n<script>{SCRIPT}</script></body></html>\n"
    )


def write(path: Path, page: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


CSS = """
:root{--fg:#1d1f23;--bg:#fff;--muted:#667;--line:#d9dce1;--head:#f3f4f6;
--ok:#1f7a3f;--ok-bg:#e3f4e8;--bad:#b3261e;--bad-bg:#fde7e4;--na:#5f6670;--na-bg:#eef0f2;
--err:#7b2cbf;--err-bg:#f1e6fb}
@media (prefers-color-scheme:dark){:root{--fg:#e6e6e6;--bg:#17191c;--muted:#9aa0a8;
--line:#33373d;--head:#212428;--ok:#6fd08c;--ok-bg:#1b3324;--bad:#ff8a80;--bad-bg:#3d1f1c;
--na:#a7adb5;--na-bg:#26292d;--err:#cf9bff;--err-bg:#2f2140}}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg);margin:0 24px 48px}
header h1{font-size:22px;margin:18px 0 4px}
h2{font-size:18px;margin:28px 0 8px}h3{font-size:15px;margin:14px 0 6px}
code,.ladder,.detail-text,.req{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace}
.muted{color:var(--muted)}.summary{font-weight:600;margin:2px 0}
nav{position:sticky;top:0;background:var(--bg);padding:6px 0;border-bottom:1px solid var(--line);
z-index:3}
nav a{color:inherit}
.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:center;margin:8px 0 10px}
.filters select,.filters input[type=search]{font:inherit;padding:2px 4px}
.chip{border-radius:12px;padding:2px 9px;cursor:pointer;user-select:none}
.chip .n{opacity:.7}
button{font:inherit;cursor:pointer}
table{border-collapse:collapse}
th,td{border:1px solid var(--line);padding:3px 7px;text-align:left;vertical-align:top}
thead th{background:var(--head);position:sticky;top:33px;z-index:2}
.matrix td.id{white-space:nowrap}
.matrix td.req{font-size:12px;color:var(--muted);white-space:nowrap}
.counts{font-weight:400;font-size:11px}
.counts span{background:none}
.cell{text-align:center;white-space:nowrap}
.v-conforms,.v-pass{background:var(--ok-bg);color:var(--ok)}
.v-deviates,.v-fail{background:var(--bad-bg);color:var(--bad)}
.v-n-a{background:var(--na-bg);color:var(--na)}
.v-error{background:var(--err-bg);color:var(--err)}
.v-none{color:var(--muted)}
td.cell.dim{opacity:.3}
.toggle{border:1px solid currentColor;background:transparent;color:inherit;border-radius:4px;
padding:0 6px;font-weight:600}
.toggle::before{content:"▸ "}.toggle[aria-expanded=true]::before{content:"▾ "}
tr.detail>td{background:var(--bg);padding:8px 12px}
.panel{border-left:4px solid currentColor;padding:4px 12px 8px;margin:6px 0;background:var(--bg)}
.panel h3,.panel p,.panel table{color:var(--fg)}
.detail-text{white-space:pre-wrap;word-break:break-word}
.artifacts{margin:6px 0;padding-left:18px}
.missing{color:var(--bad)}
.counters caption{text-align:left;color:var(--muted);font-size:12px}
.counters th{font-weight:500}
.ladder{font-size:12px;margin-top:4px}
.ladder th,.ladder td{border:none;padding:1px 4px}
.ladder thead th{position:static;background:none}
.ladder .lifelines{display:flex;justify-content:space-between;min-width:560px;
font-weight:600;margin:0 -14px 0 -10px}
.ladder td.t,.ladder td.if{color:var(--muted);white-space:nowrap;text-align:right}
.ladder td.line{border-left:2px solid var(--muted);min-width:560px;padding:2px 14px}
.ladder td.end{border-left:2px solid var(--muted);width:0;padding:0}
.ladder .label{position:relative;border-bottom:2px solid var(--fg);padding:0 14px 1px;
text-align:center}
.ladder tr.to-iut .label::after,.ladder tr.to-tester .label::after{content:"";position:absolute;
bottom:-7px;border:6px solid transparent}
.ladder tr.to-iut .label::after{right:-4px;border-left:10px solid var(--fg)}
.ladder tr.to-tester .label::after{left:-4px;border-right:10px solid var(--fg)}
.ladder tr.to-tester .label{border-bottom-style:dashed}
.ladder .seg{display:block}.ladder .opts{display:block;color:var(--muted)}
.ladder tr.raw td{color:var(--muted)}
.diff{margin-top:6px;max-width:1400px}
.diff caption{text-align:left;color:var(--muted)}
.diff td{max-width:560px}
.grid .client{white-space:nowrap}
.grid .cell{min-width:150px}
.scenario{margin-bottom:18px}
.env th{font-weight:500}
[hidden]{display:none!important}
"""

SCRIPT = r"""
(function () {
  "use strict";
  function all(selector, root) {
    return Array.prototype.slice.call((root || document).querySelectorAll(selector));
  }
  function readState() {
    var state = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var at = part.indexOf("=");
      if (at > 0) {
        try {
          state[decodeURIComponent(part.slice(0, at))] = decodeURIComponent(part.slice(at + 1));
        } catch (e) { /* a hand-made fragment: ignore that part */ }
      }
    });
    return state;
  }
  var state = readState();
  function saveState() {
    var parts = [];
    Object.keys(state).forEach(function (key) {
      if (state[key]) {
        parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(state[key]));
      }
    });
    try {
      history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname);
    } catch (e) { /* some browsers refuse it on file: pages; the view still works */ }
  }
  var group = document.getElementById("group-filter");
  var groupKey = group ? group.getAttribute("data-key") : "group";
  var text = document.getElementById("text-filter");
  var boxes = all("input.verdict-filter");
  var items = all(".item");
  var shown = document.getElementById("shown-count");

  function toggleOf(detail) {
    return document.querySelector('button.toggle[aria-controls="' + detail.id + '"]');
  }
  function refreshDetails() {
    all(".detail").forEach(function (detail) {
      var parent = document.getElementById(detail.getAttribute("data-parent"));
      var button = toggleOf(detail);
      var open = button && button.getAttribute("aria-expanded") === "true";
      detail.hidden = !open || (parent !== null && parent.hidden);
    });
  }
  function apply(initial) {
    var wanted = boxes.filter(function (b) { return b.checked; })
      .map(function (b) { return b.value; });
    var chosen = group ? group.value : "";
    var needle = text ? text.value.trim().toLowerCase() : "";
    var count = 0;
    items.forEach(function (item) {
      var verdicts = (item.getAttribute("data-verdicts") || "").split(" ");
      var ok = (!chosen || item.getAttribute("data-group") === chosen) &&
        verdicts.some(function (v) { return wanted.indexOf(v) >= 0; }) &&
        (!needle || (item.getAttribute("data-key") || "").toLowerCase().indexOf(needle) >= 0);
      item.hidden = !ok;
      if (ok) { count += 1; }
    });
    all("td.cell[data-verdict]").forEach(function (cell) {
      cell.classList.toggle("dim", wanted.indexOf(cell.getAttribute("data-verdict")) < 0);
    });
    if (shown) { shown.textContent = count + " of " + items.length + " shown"; }
    refreshDetails();
    state[groupKey] = chosen;
    state.verdict = wanted.length === boxes.length ? "" : (wanted.join(",") || "none");
    state.q = needle;
    if (initial !== true) { saveState(); }
  }
  if (group) {
    if (state[groupKey]) { group.value = state[groupKey]; }
    group.addEventListener("change", apply);
  }
  if (state.verdict) {
    var picked = state.verdict.split(",");
    boxes.forEach(function (b) { b.checked = picked.indexOf(b.value) >= 0; });
  }
  boxes.forEach(function (b) { b.addEventListener("change", apply); });
  if (text) {
    if (state.q) { text.value = state.q; }
    text.addEventListener("input", apply);
  }
  all("button.toggle").forEach(function (button) {
    button.addEventListener("click", function () {
      var open = button.getAttribute("aria-expanded") !== "true";
      button.setAttribute("aria-expanded", open ? "true" : "false");
      refreshDetails();
    });
  });
  function setAll(open) {
    all("button.toggle").forEach(function (button) {
      var detail = document.getElementById(button.getAttribute("aria-controls"));
      var parent = detail && document.getElementById(detail.getAttribute("data-parent"));
      if (!open || !(parent && parent.hidden)) {
        button.setAttribute("aria-expanded", open ? "true" : "false");
      }
    });
    refreshDetails();
  }
  var expand = document.getElementById("expand-all");
  var collapse = document.getElementById("collapse-all");
  if (expand) { expand.addEventListener("click", function () { setAll(true); }); }
  if (collapse) { collapse.addEventListener("click", function () { setAll(false); }); }

  var left = document.getElementById("diff-left");
  var right = document.getElementById("diff-right");
  function showDiff(initial) {
    if (!left || !right) { return; }
    all("table.diff").forEach(function (table) {
      table.hidden = !(table.getAttribute("data-left") === left.value &&
        table.getAttribute("data-right") === right.value);
    });
    document.getElementById("diff-same").hidden = left.value !== right.value;
    state.left = left.value;
    state.right = right.value;
    if (initial !== true) { saveState(); }
  }
  if (left && right) {
    var values = all("option", left).map(function (o) { return o.value; });
    if (values.indexOf(state.left) >= 0) { left.value = state.left; }
    if (values.indexOf(state.right) >= 0) { right.value = state.right; }
    left.addEventListener("change", showDiff);
    right.addEventListener("change", showDiff);
    showDiff(true);
  }
  apply(true);
  document.documentElement.setAttribute("data-ready", "1");
})();
"""


def _known_defect(key: str) -> str:
    if not key:
        return ""
    from conformance.interop.cell import KNOWN_DEFECTS

    text = esc(KNOWN_DEFECTS[key])
    return f'<p class="muted">Known defect, not a failure of this run: {text}</p>'
