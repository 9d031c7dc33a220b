"""The results as one self-contained HTML page: per scenario run its verdict, its failures, its steps
and its hops as a sequence diagram (a lane per host, an arrow per command and one per reply).

Pure: results in, a string out. Nothing is fetched when the page is opened (no external CSS, fonts
or scripts, and a Content-Security-Policy that forbids them), so the file can be kept as a CI artifact
and read offline. Every text shown comes from scenario files (pull requests: possibly hostile) or from
the wire; all of it is escaped, and only fixed words become class names or ids.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, PASSED, SKIPPED, Failure, ScenarioResult
from harness.mta import ROLES
from harness.report.merge import mta_order
from harness.report.transcript import _failure_for as failure_about
from harness.smtp.transcript import Exchange

__all__ = ["html_report", "lanes_for"]

# The order mail flows in: the client hands it to the relay, which passes it on to mx. The other
# standard roles follow, then any host a scenario adds, in the order it first appears.
_FLOW = ("client", "relay", "mx")
STANDARD_LANES: tuple[str, ...] = _FLOW + tuple(r for r in ROLES if r not in _FLOW)

# Class names come only from these words, never from the results' own text.
_VERDICTS = (PASSED, FAILED, ERROR, CONFIG_ERROR, SKIPPED)

# C0 controls (but tab and newline) and DEL shown as \xNN: a reply may carry any byte.
_VISIBLE = str.maketrans({c: f"\\x{c:02x}" for c in [*range(32), 127] if c not in (9, 10)})


def _text(value: object) -> str:
    """Any value as escaped HTML text (also safe inside a quoted attribute)."""
    visible = str(value).translate(_VISIBLE)
    # A lone surrogate (from a hand-edited results file) cannot be written as UTF-8: show it as \udXXX.
    visible = visible.encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(visible, quote=True)


def _verdict_class(status: str) -> str:
    return status if status in _VERDICTS else "unknown"


def _hop_ends(hop: str) -> tuple[str, str]:
    sender, arrow, receiver = hop.partition("->")
    return (sender, receiver) if arrow else ("client", hop)


def lanes_for(exchanges: Sequence[Exchange]) -> list[str]:
    """The diagram's lanes: the standard hosts, then every other one in the order it first appears."""
    lanes = list(STANDARD_LANES)
    for ex in exchanges:
        for end in _hop_ends(ex.hop):
            if end not in lanes:
                lanes.append(end)
    return lanes


def html_report(results: Sequence[ScenarioResult], *, title: str = "mailflow-harness report") -> str:
    counts = {s: sum(1 for r in results if r.status == s) for s in _VERDICTS}
    totals = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no results"
    sections = "\n".join(_scenario_run(r, f"run-{i}") for i, r in enumerate(results, 1))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}: {_text(totals)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_text(title)}</h1>
<p class="totals">{len(results)} scenario run(s): {_text(totals)}</p>
{_overview(results)}
</header>
<main>
{sections}
</main>
</body>
</html>
"""


def _overview(results: Sequence[ScenarioResult]) -> str:
    """Scenarios down, implementations across, each cell the verdict linking to the run's section."""
    if not results:
        return ""
    mtas = mta_order([r.mta for r in results])
    rows: dict[str, dict[str, list[str]]] = {}
    names: dict[str, str] = {}
    for i, r in enumerate(results, 1):
        names.setdefault(r.file, r.name)
        verdict = _verdict_class(r.status)
        rows.setdefault(r.file, {}).setdefault(r.mta, []).append(
            f'<a class="verdict {verdict}" href="#run-{i}">{_text(r.status)}</a>')
    head = "".join(f"<th>{_text(m)}</th>" for m in mtas)
    body = "\n".join(
        f'<tr><th scope="row" title="{_text(file)}">{_text(names[file])}</th>'
        + "".join(f"<td>{' '.join(cells.get(m, []))}</td>" for m in mtas) + "</tr>"
        for file, cells in rows.items())
    return f'<table class="overview">\n<tr><th>scenario</th>{head}</tr>\n{body}\n</table>'


def _scenario_run(result: ScenarioResult, anchor: str) -> str:
    verdict = _verdict_class(result.status)
    arrows = _failure_arrows(result)
    meta = [_text(result.file), f"{result.duration_s:.1f} s"]
    if result.run_id:
        meta.append(f"run {_text(result.run_id)}")
    parts = [
        f'<section class="scenario-run {verdict}" id="{anchor}" data-status="{_text(result.status)}" '
        f'data-mta="{_text(result.mta)}" data-file="{_text(result.file)}">',
        f'<h2><span class="verdict {verdict}">{_text(result.status)}</span> {_text(result.name)} '
        f'<span class="mta">[{_text(result.mta)}]</span></h2>',
        f'<p class="meta">{" · ".join(meta)}</p>',
    ]
    if result.error:
        parts.append(f'<pre class="error">{_text(result.error)}</pre>')
    parts.append(_failures(result, anchor, arrows))
    parts.append(_steps(result))
    parts.append(_sequence_diagram(result, anchor, arrows))
    parts.append(_role_lines("log (the scenario's window)", "logs", result.logs, opened=verdict != PASSED))
    parts.append(_role_lines("configuration check", "config-warnings", result.config_warnings, opened=False))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _failure_arrows(result: ScenarioResult) -> dict[int, int]:
    """Which exchange (by index) each failure (by index) is about, as the console's timeline marks it."""
    found: dict[int, int] = {}
    for j, ex in enumerate(result.exchanges):
        failure = failure_about(ex, result.failures)
        if failure is None:
            continue
        i = next(i for i, f in enumerate(result.failures) if f is failure)
        found.setdefault(i, j)
    return found


def _failure_text(f: Failure) -> str:
    stage = f" {f.stage}" if f.stage else ""
    where = f", {f.hop} session {f.session}" if f.hop is not None and f.session is not None else ""
    return f"step {f.step} ({f.kind}{stage}{where}): expected {f.expected}, observed {f.observed}"


def _failures(result: ScenarioResult, anchor: str, arrows: dict[int, int]) -> str:
    if not result.failures:
        return ""
    items = []
    for i, f in enumerate(result.failures):
        location = f'<span class="location">{_text(f.mark)}: </span>' if f.mark else ""
        link = ""
        if i in arrows:
            link = f' <a href="#{_exchange_id(anchor, arrows[i])}">in the diagram</a>'
        items.append(f'<li class="failure" data-step="{f.step}">{location}{_text(_failure_text(f))}{link}</li>')
    return f'<ol class="failures">\n{"".join(items)}\n</ol>'


def _steps(result: ScenarioResult) -> str:
    if not result.steps:
        return ""
    rows = []
    for s in result.steps:
        status = s.status if s.status in _VERDICTS else "unknown"
        override = f'<br><span class="override">override: {_text(s.override)}</span>' if s.override else ""
        if s.reproduce:
            override += (f'<details class="replay"><summary>replay by hand (harness up, then swaks)</summary>'
                         f'<pre>{_text(s.reproduce)}</pre></details>')
        # When it began and how long it took: a wait that ran out its whole bound shows here.
        when = "" if s.at_s is None or s.took_s is None else f"{s.at_s:.3f} s, took {s.took_s:.3f} s"
        rows.append(f'<tr class="step {status}" data-step="{s.step}"><td>{s.step}</td><td>{_text(s.kind)}</td>'
                    f'<td class="status">{_text(s.status)}</td><td class="when">{when}</td>'
                    f'<td>{_text(s.summary)}{override}</td></tr>')
    return ('<table class="steps">\n<tr><th>step</th><th>kind</th><th>status</th><th>at</th><th>observed</th></tr>\n'
            + "\n".join(rows) + "\n</table>")


def _role_lines(what: str, css: str, lines_by_role: dict[str, list[str]], *, opened: bool) -> str:
    blocks = []
    for role, lines in lines_by_role.items():
        if lines:
            blocks.append(f'<details class="{css}"{" open" if opened else ""}><summary>{_text(role)}\'s '
                          f'{_text(what)}</summary><pre>{_text(chr(10).join(lines))}</pre></details>')
    return "\n".join(blocks)


def _exchange_id(anchor: str, index: int) -> str:
    # Ids are made of the run's position and the exchange's: nothing from the results' text.
    return f"{anchor}-x{index + 1}"


def _columns(lanes: list[str], a: str, b: str) -> str:
    """The grid columns from lane a's centre to lane b's: each lane is two columns, its centre between."""
    left, right = sorted((lanes.index(a), lanes.index(b)))
    if left == right:  # a host talking to itself: a short arrow to the right of its lifeline
        return f"{2 * left + 2} / {2 * left + 3}"
    return f"{2 * left + 2} / {2 * right + 2}"


def _reply_label(ex: Exchange) -> str:
    first = _text(ex.reply_str())
    if len(ex.lines) > 1:  # EHLO's capabilities: the first line, the rest on request
        more = f'<span class="more">+{len(ex.lines) - 1} lines</span>'
        return f"<details><summary>{first} {more}</summary><pre>{_text(chr(10).join(ex.lines))}</pre></details>"
    return first


def _command_label(ex: Exchange) -> str:
    if ex.sent is None:  # the connection itself: no command, the greeting answers it
        return "(connect)" if ex.command == "CONNECT" else _text(ex.command)
    if ex.command == "END-OF-DATA":  # the lone dot says little on its own
        return f'{_text(ex.sent)} <span class="more">end of data</span>'
    return _text(ex.sent)


def _reply_class(ex: Exchange) -> str:
    return f"code-{ex.code // 100}xx" if ex.code is not None else "no-reply"


def _sequence_diagram(result: ScenarioResult, anchor: str, arrows: dict[int, int]) -> str:
    if not result.exchanges:
        return '<p class="no-exchanges">No SMTP exchange was observed.</p>'
    lanes = lanes_for(result.exchanges)
    busy = {end for ex in result.exchanges for end in _hop_ends(ex.hop)}
    sessions: dict[str, set[int]] = {}
    for ex in result.exchanges:
        sessions.setdefault(ex.hop, set()).add(ex.session)
    failing = {j: result.failures[i] for i, j in arrows.items()}
    cells: list[str] = []
    row = 2
    for j, ex in enumerate(result.exchanges):
        sender, receiver = _hop_ends(ex.hop)
        columns = _columns(lanes, sender, receiver)
        towards = "rightward" if lanes.index(sender) <= lanes.index(receiver) else "leftward"
        back = "leftward" if towards == "rightward" else "rightward"
        session = f" · session {ex.session}" if len(sessions[ex.hop]) > 1 else ""
        data = (f'data-hop="{_text(ex.hop)}" data-session="{ex.session}" data-command="{_text(ex.command)}" '
                f'title="{_text(ex.hop)} session {ex.session}, {ex.at_s:.3f} s"')
        cells.append(
            f'<div class="arrow command {towards}" {data} data-from="{_text(sender)}" data-to="{_text(receiver)}" '
            f'style="grid-row: {row}; grid-column: {columns}"><span class="label"><span class="time">'
            f'{ex.at_s:.3f}s{session}</span> {_command_label(ex)}</span><span class="shaft"></span></div>')
        failure = failing.get(j)
        marker = ""
        failed = ""
        if failure is not None:
            failed = " failed"
            marker = f' <span class="failure-marker">✗ expected {_text(failure.expected)}</span>'
        code = "" if ex.code is None else str(ex.code)
        cells.append(
            f'<div class="arrow reply {_reply_class(ex)} {back}{failed}" id="{_exchange_id(anchor, j)}" {data} '
            f'data-code="{code}" data-from="{_text(receiver)}" data-to="{_text(sender)}" '
            f'style="grid-row: {row + 1}; grid-column: {columns}"><span class="label">{_reply_label(ex)}'
            f'{marker}</span><span class="shaft"></span></div>')
        row += 2
    located = set(arrows)
    for i, f in enumerate(result.failures):
        if f.hop is None or i in located:
            continue
        # A stage never reached, a hop never seen: marked on the hop's lanes, after what was seen.
        sender, receiver = _hop_ends(f.hop)
        columns = _columns(lanes, sender, receiver) if sender in lanes and receiver in lanes else "1 / -1"
        cells.append(f'<div class="note failed" data-hop="{_text(f.hop)}" style="grid-row: {row}; '
                     f'grid-column: {columns}">✗ {_text(_failure_text(f))}</div>')
        row += 1
    heads = []
    for k, lane in enumerate(lanes):
        idle = "" if lane in busy else " idle"
        span = f"{2 * k + 1} / {2 * k + 3}"
        heads.append(f'<div class="lane{idle}" data-lane="{_text(lane)}" style="grid-row: 1; grid-column: {span}">'
                     f'{_text(lane)}</div>')
        heads.append(f'<div class="lifeline{idle}" data-lane="{_text(lane)}" '
                     f'style="grid-row: 2 / {max(row, 3)}; grid-column: {span}"></div>')
    grid = (f"grid-template-columns: repeat({2 * len(lanes)}, minmax(0, 1fr)); "
            f"min-width: {len(lanes) * 13}rem")
    return (f'<div class="diagram-frame"><div class="sequence-diagram" style="{grid}">\n'
            + "\n".join(heads + cells) + "\n</div></div>")


_CSS = """
:root { color-scheme: light; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --info: #0969da; --muted: #6e7781; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; padding: 1rem 1.5rem;
       max-width: 1500px; color: #1f2328; background: #fff; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 0 0 .25rem; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace;
      margin: .25rem 0; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border: 1px solid #d0d7de; padding: .2rem .5rem; text-align: left; vertical-align: top; }
.totals { color: var(--muted); margin: 0 0 .5rem; }
.verdict { display: inline-block; border-radius: 1em; padding: 0 .6em; font-size: .85em; font-weight: 600;
           color: #fff; background: var(--muted); text-decoration: none; }
.verdict.passed { background: var(--ok); }
.verdict.failed, .verdict.error, .verdict.config-error { background: var(--bad); }
.scenario-run { border: 1px solid #d0d7de; border-left: 6px solid var(--ok); border-radius: 6px;
                padding: .75rem 1rem; margin: 1rem 0; }
.scenario-run.failed, .scenario-run.error, .scenario-run.config-error { border-left-color: var(--bad); }
.scenario-run.skipped, .scenario-run.unknown { border-left-color: var(--muted); }
.mta { color: var(--muted); font-weight: normal; }
.meta { color: var(--muted); margin: 0 0 .5rem; overflow-wrap: anywhere; }
pre.error { color: var(--bad); background: #ffebe9; padding: .5rem; border-radius: 4px; }
.failures { color: var(--bad); margin: .25rem 0 .5rem; padding-left: 1.5rem; overflow-wrap: anywhere; }
.failures .location { font-family: ui-monospace, monospace; }
.steps td:first-child { text-align: right; }
.step.failed { background: #ffebe9; }
.step.failed .status { color: var(--bad); font-weight: 600; }
.step.skipped { color: var(--muted); }
.override { color: var(--warn); }
details > summary { cursor: pointer; }
.logs pre, .config-warnings pre { background: #f6f8fa; padding: .5rem; }
.diagram-frame { overflow-x: auto; margin: .5rem 0; }
.sequence-diagram { display: grid; position: relative; padding-bottom: .5rem; }
.lane { justify-self: center; align-self: end; z-index: 1; padding: .2rem .8rem; margin-bottom: .3rem;
        max-width: 100%; overflow-wrap: anywhere; text-align: center;
        border: 2px solid #1f2328; border-radius: 4px; background: #f6f8fa; font-weight: 600; }
.lane.idle { border-style: dashed; border-color: #afb8c1; color: var(--muted); font-weight: normal; }
.lifeline { background: linear-gradient(#57606a, #57606a) no-repeat center / 2px 100%; }
.lifeline.idle { background: linear-gradient(#d0d7de, #d0d7de) no-repeat center / 1px 100%; }
.arrow { position: relative; z-index: 1; padding: .15rem 0 .3rem; color: #1f2328; min-width: 0; }
.arrow .label { display: block; text-align: center; padding: 0 .6rem; overflow-wrap: anywhere;
                font: 12px/1.35 ui-monospace, "DejaVu Sans Mono", monospace; }
.arrow .label details, .arrow .label summary { display: inline; }
.arrow .label details[open] { display: block; text-align: left; background: #f6f8fa; }
.arrow .time, .arrow .more { color: var(--muted); font-size: 11px; }
.arrow .shaft { display: block; position: relative; height: 0; border-top: 2px solid currentColor; margin-top: 2px; }
.arrow.reply .shaft { border-top-style: dashed; }
.arrow .shaft::after { content: ""; position: absolute; top: -6px; border: 5px solid transparent; }
.arrow.rightward .shaft::after { right: -1px; border-right: 0; border-left: 9px solid currentColor; }
.arrow.leftward .shaft::after { left: -1px; border-left: 0; border-right: 9px solid currentColor; }
.arrow.code-2xx { color: var(--ok); }
.arrow.code-3xx { color: var(--info); }
.arrow.code-4xx { color: var(--warn); }
.arrow.code-5xx { color: var(--bad); }
.arrow.no-reply { color: var(--muted); }
.arrow.command .label { color: #1f2328; }
.arrow.failed { color: var(--bad); }
.arrow.failed .label { background: #ffebe9; outline: 2px solid var(--bad); border-radius: 3px; font-weight: 600; }
.arrow.failed .shaft { border-top-width: 3px; }
.failure-marker { display: inline-block; margin-left: .4rem; padding: 0 .4rem; border-radius: 3px; color: #fff;
                  background: var(--bad); font-family: system-ui, sans-serif; }
.note.failed { z-index: 1; margin: .3rem 0; padding: .2rem .5rem; text-align: center; color: var(--bad);
               background: #ffebe9; border: 2px dashed var(--bad); border-radius: 4px; overflow-wrap: anywhere; }
.no-exchanges { color: var(--muted); font-style: italic; }
"""
