"""Reports from real results (scenarios 04 and 08 on all three MTAs, from `harness run --matrix --json`)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, Failure, ScenarioResult, result_from_json
from harness.report.console import needs_a_look, summary_table
from harness.report.files import write_json, write_junit
from harness.report.matrix import cell, matrix_markdown, matrix_text
from harness.report.transcript import render_timeline

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = Path(__file__).parent / "fixtures" / "results" / "matrix-sample.json"
MTAS = ["postfix", "exim", "opensmtpd"]


def _results() -> list[ScenarioResult]:
    return [result_from_json(r) for r in json.loads(SAMPLE.read_text())["scenarios"]]


def _by(results: list[ScenarioResult], prefix: str, mta: str) -> ScenarioResult:
    return next(r for r in results if Path(r.file).name.startswith(prefix) and r.mta == mta)


def test_cells_show_who_replied_what() -> None:
    results = _results()
    assert cell(_by(results, "04", "postfix")) == "pass: RCPT 556 5.1.10"
    assert cell(_by(results, "04", "opensmtpd")) == "pass (override): 250"
    assert cell(_by(results, "08", "postfix")) == "pass: 250, relay->nomail CONNECT 521 5.3.2, bounced 5.3.2"
    assert cell(_by(results, "08", "exim")) == "pass: 250, relay->nomail CONNECT 521 5.3.2, bounced 5.0.0"
    assert cell(_by(results, "08", "opensmtpd")).endswith("deferred")


def test_matrix_has_a_row_per_scenario_and_a_column_per_mta() -> None:
    results = _results()
    text = matrix_text(results, MTAS).splitlines()
    assert text[0].split() == ["scenario", *MTAS]
    assert len(text) == 2 + 2
    md = matrix_markdown(results, MTAS)
    assert "| null MX recipient refused at RCPT | pass: RCPT 556 5.1.10 | pass: RCPT 556 5.1.10 |" in md
    # Every override is listed with its reason.
    assert "OpenSMTPD 6.8 has no null-MX check" in md


def test_json_round_trip_keeps_the_contract(tmp_path: Path) -> None:
    results = _results()
    out = tmp_path / "r.json"
    write_json(results, out)
    again = json.loads(out.read_text())["scenarios"]
    original = json.loads(SAMPLE.read_text())["scenarios"]
    timing = ("at_s", "took_s")
    for a, b in zip(again, original, strict=True):
        for key in ("file", "name", "mta", "status", "exchanges"):
            assert a[key] == b[key]
        # The sample predates the steps' timing: read as unknown, the rest unchanged.
        assert [{k: v for k, v in s.items() if k not in timing} for s in a["steps"]] == b["steps"]
        assert all(s["at_s"] is None and s["took_s"] is None for s in a["steps"]) and a["started_at"] is None
        for e in a["exchanges"]:
            assert {"hop", "session", "command", "code", "enhanced", "text"} <= set(e)


def test_when_the_scenario_and_each_step_ran_survive_a_results_file(tmp_path: Path) -> None:
    result = _results()[0]
    result.started_at = 1796198283.2023
    result.steps = [replace(s, at_s=0.0125 + i, took_s=0.5 + i) for i, s in enumerate(result.steps)]
    out = tmp_path / "r.json"
    write_json([result], out)
    (entry,) = json.loads(out.read_text())["scenarios"]
    assert entry["started_at"] == 1796198283.2023
    assert [(s["at_s"], s["took_s"]) for s in entry["steps"]] == [
        (0.0125 + i, 0.5 + i) for i in range(len(result.steps))]
    again = result_from_json(entry)
    assert again.started_at == result.started_at
    assert [(s.at_s, s.took_s) for s in again.steps] == [(s.at_s, s.took_s) for s in result.steps]


def test_a_failure_is_marked_in_the_timeline_and_in_junit(tmp_path: Path) -> None:
    result = _by(_results(), "08", "postfix")
    failing = replace(result, status=FAILED, failures=[
        Failure(2, "hop", "CONNECT", "220", "521 5.3.2 Service currently unavailable", None, "relay->nomail", 1)])
    timeline = render_timeline(failing)
    marked = [line for line in timeline.splitlines() if "<<< expected 220" in line]
    assert len(marked) == 1 and "521" in marked[0]
    assert "client->relay session 1" in timeline and "relay->nomail session 1" in timeline
    junit = tmp_path / "j.xml"
    write_junit([failing], junit)
    failure = ET.parse(junit).getroot().find("testcase/failure")
    assert failure is not None and "<<< expected 220" in (failure.text or "")
    assert "FAIL" in summary_table([failing])


def test_junit_classname_dotted_and_the_timeline_only_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = _by(_results(), "08", "postfix")
    failing = replace(result, status=FAILED, failures=[
        Failure(2, "hop", "CONNECT", "220", "521", None, "relay->nomail", 1)],
        logs={"relay": ["postfix/smtp[9]: 4Xyz: to=<someone@sendonly.test>, status=deferred (521)"]})
    passing = replace(result, file=str(ROOT / "scenarios" / "08-relay-to-521-bounced.yaml"))
    junit = tmp_path / "j.xml"
    write_junit([failing, passing], junit)
    cases = ET.parse(junit).getroot().findall("testcase")
    assert [c.get("classname") for c in cases] == ["scenarios.08-relay-to-521-bounced"] * 2
    failure = cases[0].find("failure")
    assert failure is not None and "status=deferred (521)" in (failure.text or "")  # the MTA's own line
    assert cases[0].find("system-out") is None  # the failure text has the timeline already
    assert cases[1].find("system-out") is not None


def test_a_configuration_error_is_a_junit_error_with_the_mtas_line(tmp_path: Path) -> None:
    result = replace(_by(_results(), "08", "postfix"), status=CONFIG_ERROR, failures=[],
                     error="configuration error: relay (cfg) on postfix: fatal: chdir(/nonexistent)\n  more")
    junit = tmp_path / "j.xml"
    write_junit([result], junit)
    error = ET.parse(junit).getroot().find("testcase/error")
    assert error is not None and error.get("type") == "configuration"
    assert error.get("message") == "configuration error: relay (cfg) on postfix: fatal: chdir(/nonexistent)"
    assert "CONFIG" in summary_table([result]) and "1 configuration error(s)" in summary_table([result])


def test_the_last_lines_of_a_run_name_every_result_that_did_not_pass_and_why() -> None:
    results = _results()
    assert needs_a_look(results) == ""  # all passed: nothing to add below the matrix
    errored = replace(results[0], status=ERROR, failures=[],
                      error="`mta-reset` on mx exited 1: mta-reset: smtpd did not listen\nmore")
    failed = replace(results[1], status=FAILED, failures=[
        Failure(3, "delivery", None, "1 copy", "none within 5 s"), Failure(4, "no_bounce", None, "none", "one")])
    text = needs_a_look([results[2], errored, failed])
    lines = text.splitlines()
    assert lines[0].startswith("not passed")
    assert lines[1] == (f"ERROR {errored.name} [{errored.mta}]: "
                        "`mta-reset` on mx exited 1: mta-reset: smtpd did not listen")
    assert lines[2].startswith(f"FAIL  {failed.name} [{failed.mta}]: {failed.file}: step 3 (delivery): "
                               "expected 1 copy, observed none within 5 s (+1 more)")
    assert len(lines) == 3
