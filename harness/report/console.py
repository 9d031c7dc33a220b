"""Console output: a line per scenario as it finishes, a summary table, failing transcripts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, PASSED, ScenarioResult
from harness.report.transcript import render_failures, render_logs, render_replays, render_timeline

_WORD = {PASSED: "PASS", FAILED: "FAIL", ERROR: "ERROR", CONFIG_ERROR: "CONFIG"}


def scenario_line(result: ScenarioResult) -> str:
    return f"{_WORD[result.status]:5} {result.name} [{result.mta}]  ({result.file}, {result.duration_s:.1f}s)"


def details(result: ScenarioResult) -> str:
    logs = render_logs(result)
    if result.status in (ERROR, CONFIG_ERROR):
        return "\n".join(filter(None, [f"  {result.error}" if result.status == CONFIG_ERROR
                                        else f"  error: {result.error}", checks(result), logs]))
    if result.status == FAILED:
        return "\n".join(filter(None, [render_failures(result), checks(result), logs, "  transcript:",
                                        render_timeline(result), render_replays(result)]))
    return checks(result)


def checks(result: ScenarioResult) -> str:
    """What the MTAs' own configuration checks warned about, shown with every result."""
    return "\n".join(f"  {role}'s configuration check: {line}"
                     for role, lines in result.config_warnings.items() for line in lines)


def summary_table(results: Sequence[ScenarioResult]) -> str:
    rows = [("status", "scenario", "mta", "time", "observed")]
    for r in results:
        observed = "; ".join(s.summary for s in r.steps if s.kind == "smtp")
        if r.status in (ERROR, CONFIG_ERROR):
            observed = (r.error or "").splitlines()[0] if r.error else ""
        rows.append((_WORD[r.status], r.name, r.mta, f"{r.duration_s:.1f}s", observed))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASSED, FAILED, ERROR, CONFIG_ERROR)}
    refused = f", {counts[CONFIG_ERROR]} configuration error(s)" if counts[CONFIG_ERROR] else ""
    lines.append(f"{len(results)} scenario(s): {counts[PASSED]} passed, {counts[FAILED]} failed, "
                 f"{counts[ERROR]} error(s){refused}")
    return "\n".join(lines)


def needs_a_look(results: Sequence[ScenarioResult]) -> str:
    """The last lines of a run: every result that did not pass, with its first reason. The end of a
    long run's output is what CI logs keep and people read first; the full reports are above."""
    lines = []
    for r in results:
        if r.status in (ERROR, CONFIG_ERROR):
            reason = (r.error or "").strip().splitlines()[0] if (r.error or "").strip() else "no reason recorded"
        elif r.status == FAILED and r.failures:
            f = r.failures[0]
            where = f"{f.mark}: " if f.mark else f"{r.file}: "
            more = f" (+{len(r.failures) - 1} more)" if len(r.failures) > 1 else ""
            observed = f.observed.strip().splitlines()[0] if f.observed.strip() else ""
            reason = f"{where}step {f.step} ({f.kind}): expected {f.expected}, observed {observed}{more}"
        else:
            continue
        lines.append(f"{_WORD[r.status]:5} {r.name} [{r.mta}]: {reason}")
    return "\n".join(["not passed (details above):", *lines]) if lines else ""


def print_result(result: ScenarioResult, stream: TextIO) -> None:
    print(scenario_line(result), file=stream, flush=True)
    text = details(result)
    if text:
        print(text, file=stream, flush=True)
