"""Machine-readable results: JSON (the contract others build on) and JUnit XML."""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, ScenarioResult
from harness.report.transcript import render_failures, render_logs, render_timeline


def write_json(results: Sequence[ScenarioResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"scenarios": [r.to_json() for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def junit_classname(file: str) -> str:
    """``scenarios/02-relay-354.yaml`` -> ``scenarios.02-relay-354``: relative to the working directory
    when below it, dotted, without the extension (how CI pages group test cases)."""
    path = Path(file)
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(Path.cwd().resolve())
    return ".".join(path.with_suffix("").parts).lstrip("/.") or str(file)


def write_junit(results: Sequence[ScenarioResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
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
            node.text = "\n\n".join(filter(None, [render_failures(r), render_logs(r), render_timeline(r)]))
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
