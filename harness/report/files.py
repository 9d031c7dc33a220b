"""Machine-readable results: JSON (the contract others build on) and JUnit XML.

Where results go is checked before anything runs (``check_destinations``, called by every command that
writes files): a run's results are never lost to a path that is a directory, whose directory cannot be
made, or that cannot be written. A missing directory is made only inside the working directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import UsageError
from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, ScenarioResult
from harness.report.html import html_report
from harness.report.transcript import render_failures, render_logs, render_replays, render_timeline


def destination_problem(path: Path) -> str | None:
    """Why results cannot be written to ``path``, or None. A missing parent directory is fine inside the
    working directory (it is made when the file is written, e.g. build/), a problem outside it: the harness
    makes no directories elsewhere unasked."""
    if path.is_dir():
        return "is a directory"
    if path.exists():
        return None if os.access(path, os.W_OK) else "is not writable"
    if path.is_symlink():
        return f"is a symlink to {os.readlink(path)}, which does not exist"
    absolute = Path(os.path.abspath(path))
    existing = absolute.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be created: {existing} is not a directory"
    if existing != absolute.parent:
        try:
            cwd = Path.cwd().resolve()
        except OSError:
            cwd = None
        target = existing.resolve() / absolute.parent.relative_to(existing)
        if cwd is None or not target.is_relative_to(cwd):
            return (f"cannot be created: directory {absolute.parent} does not exist (the harness makes missing "
                    f"directories only inside the working directory{f', {cwd}' if cwd else ''})")
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be created: directory {existing} is not writable"
    return None


def check_destinations(destinations: Mapping[str, Path]) -> None:
    """Before anything runs: every results file asked for (option -> path, e.g. ``{"--json": ...}``) can be
    written, and no two options name the same file. UsageError (exit 2) naming the option otherwise."""
    seen: dict[Path, str] = {}
    for option, path in destinations.items():
        problem = destination_problem(path)
        if problem is not None:
            raise UsageError(f"{option} {path}: {problem}; no results could be written there, so nothing was run")
        key = Path(os.path.abspath(path))
        with contextlib.suppress(OSError, RuntimeError):
            key = key.resolve()
        if key in seen:
            raise UsageError(f"{seen[key]} and {option} both name {path}: one would overwrite the other's results")
        seen[key] = option


def prepare_destination(path: Path) -> None:
    """Make the file's missing directories (inside the working directory only, see destination_problem)."""
    problem = destination_problem(path)
    if problem is not None:
        raise UsageError(f"cannot write {path}: {problem}")
    path.parent.mkdir(parents=True, exist_ok=True)


def write_json(results: Sequence[ScenarioResult], path: Path) -> None:
    prepare_destination(path)
    doc = {"scenarios": [r.to_json() for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def write_html(results: Sequence[ScenarioResult], path: Path) -> None:
    """One self-contained page (harness.report.html): verdicts, failures, each run's hops as a sequence diagram."""
    prepare_destination(path)
    path.write_text(html_report(results), encoding="utf-8")


def junit_classname(file: str) -> str:
    """``scenarios/02-relay-354.yaml`` -> ``scenarios.02-relay-354``: relative to the working directory
    when below it, dotted, without the extension (how CI pages group test cases)."""
    path = Path(file)
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(Path.cwd().resolve())
    return ".".join(path.with_suffix("").parts).lstrip("/.") or str(file)


def write_junit(results: Sequence[ScenarioResult], path: Path) -> None:
    prepare_destination(path)
    suite = ET.Element("testsuite", {
        "name": "mailflow-harness",
        "tests": str(len(results)),
        "failures": str(sum(1 for r in results if r.status == FAILED)),
        "errors": str(sum(1 for r in results if r.status in (ERROR, CONFIG_ERROR))),
        "time": f"{sum(r.duration_s for r in results):.3f}",
    })
    for r in results:
        case = ET.SubElement(suite, "testcase", {"classname": junit_classname(r.file),
                                                 "name": f"{r.name} [{r.mta}]", "time": f"{r.duration_s:.3f}"})
        if r.status == FAILED:
            first = r.failures[0]
            node = ET.SubElement(case, "failure", {"message": f"{first.stage or first.kind}: expected "
                                                              f"{first.expected}, observed {first.observed}"})
            node.text = "\n\n".join(filter(None, [render_failures(r), render_logs(r), render_timeline(r),
                                                     render_replays(r)]))
        elif r.status == CONFIG_ERROR:
            # The MTA's own complaint is the message: what a CI summary shows first.
            node = ET.SubElement(case, "error", {"type": "configuration",
                                                 "message": (r.error or "").splitlines()[0] if r.error else ""})
            node.text = r.error
        elif r.status == ERROR:
            node = ET.SubElement(case, "error", {"message": (r.error or "").splitlines()[0] if r.error else ""})
            node.text = "\n\n".join(filter(None, [r.error, render_logs(r)]))
        if r.status not in (FAILED, ERROR, CONFIG_ERROR):
            # A failure's text has the timeline already: CI pages show both, so only once.
            out = ET.SubElement(case, "system-out")
            out.text = render_timeline(r)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
