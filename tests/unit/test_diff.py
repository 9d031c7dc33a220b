"""`harness diff`: what changed between a baseline's and a candidate's results (harness.report.diff),
and the command's file mode (no containers)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import EXIT_FAILED, EXIT_INFRA, EXIT_OK, EXIT_USAGE
from harness.expect.results import CONFIG_ERROR, ERROR, FAILED, ScenarioResult, StepOutcome, result_from_json
from harness.observe.observations import SessionObservation
from harness.report.diff import ADDED, CHANGED, REMOVED, diff_markdown, diff_results, diff_text, key_replies
from harness.report.files import write_json
from harness.smtp.transcript import Exchange

SAMPLE = Path(__file__).parent / "fixtures" / "results" / "matrix-sample.json"
NULLMX = "scenarios/04-nullmx-recipient.yaml"


def _results() -> list[ScenarioResult]:
    return [result_from_json(r) for r in json.loads(SAMPLE.read_text())["scenarios"]]


def _pick(results: list[ScenarioResult], stem: str, mta: str) -> ScenarioResult:
    return next(r for r in results if stem in r.file and r.mta == mta)


def _with_session(result: ScenarioResult, change: dict[str, tuple[int, str | None]]) -> ScenarioResult:
    """``result`` with its client session's replies to the commands in ``change`` replaced."""
    def step(s: StepOutcome) -> StepOutcome:
        if not isinstance(s.observation, SessionObservation):
            return s
        exchanges = tuple(replace(e, code=change[e.command][0], enhanced=change[e.command][1])
                          if e.command in change else e for e in s.observation.exchanges)
        return replace(s, observation=replace(s.observation, exchanges=exchanges))

    return replace(result, steps=[step(s) for s in result.steps])


def _replaced(results: list[ScenarioResult], old: ScenarioResult, new: ScenarioResult) -> list[ScenarioResult]:
    return [new if r is old else r for r in results]


def test_identical_results_have_no_differences_and_exit_0() -> None:
    diff = diff_results(_results(), _results())
    assert diff.identical and diff.scenarios == () and diff.exit_code == EXIT_OK
    assert diff.unchanged == 6
    assert diff_text(diff).startswith("no behaviour changed: 0 changed, 0 added, 0 removed, 6 unchanged")


def test_what_differs_from_run_to_run_is_not_a_change() -> None:
    """Times, run ids, queue ids, dates, Message-IDs and reply texts differ between any two runs."""
    def volatile(r: ScenarioResult) -> ScenarioResult:
        def step(s: StepOutcome) -> StepOutcome:
            obs = s.observation
            if not isinstance(obs, SessionObservation):
                return s
            exchanges = tuple(replace(e, at_s=e.at_s + 1.5, text=e.text.replace("queued as", "queued as 4XyZ9"))
                              for e in obs.exchanges)
            return replace(s, observation=replace(obs, exchanges=exchanges, message_id="<other@origin.test>"),
                           summary=s.summary + " (at another time)")

        return replace(r, run_id="other-run", duration_s=r.duration_s + 7, steps=[step(s) for s in r.steps],
                       exchanges=[replace(e, at_s=e.at_s + 3) for e in r.exchanges])

    diff = diff_results(_results(), [volatile(r) for r in _results()])
    assert diff.identical, diff_text(diff)


def test_a_changed_rcpt_code_names_exactly_that_scenario_and_the_reply() -> None:
    before = _results()
    old = _pick(before, "04-nullmx", "postfix")
    after = _replaced(before, old, _with_session(old, {"RCPT": (250, "2.1.5")}))
    diff = diff_results(before, after)
    (changed,) = diff.scenarios
    assert (changed.kind, changed.file, changed.mta) == (CHANGED, NULLMX, "postfix")
    assert [c.text() for c in changed.changes] == ["RCPT 556 5.1.10 -> 250 2.1.5"]
    assert changed.verdict == "still passed"
    assert diff.exit_code == EXIT_FAILED and diff.unchanged == 5
    text = diff_text(diff)
    assert "null MX recipient refused at RCPT [postfix]: RCPT 556 5.1.10 -> 250 2.1.5" in text.splitlines()
    assert "[exim]" not in text and "521" not in text


def test_replies_a_side_never_got_are_shown_as_not_reached() -> None:
    before = _results()
    refused = _pick(before, "04-nullmx", "postfix")
    accepted = replace(_pick(before, "04-nullmx", "opensmtpd"), mta="postfix", status=FAILED)
    diff = diff_results([refused], [accepted])
    (changed,) = diff.scenarios
    assert changed.verdict == "passed -> failed"
    texts = [c.text() for c in changed.changes]
    assert "RCPT 556 5.1.10 -> 250 2.1.5" in texts
    assert "DATA (not reached) -> 354" in texts and "END-OF-DATA (not reached) -> 250 2.0.0" in texts
    assert changed.lines()[0] == f"null MX recipient refused at RCPT [postfix]: passed -> failed  ({NULLMX})"


def test_a_status_change_alone_is_a_change() -> None:
    before = _results()
    old = _pick(before, "08-relay-to-521", "exim")
    diff = diff_results(before, _replaced(before, old, replace(old, status=FAILED)))
    (changed,) = diff.scenarios
    assert (changed.before, changed.after, changed.changes) == ("passed", "failed", ())
    assert diff.exit_code == EXIT_FAILED
    assert "relay to a 521 host bouncing on a 5xx greeting [exim]: passed -> failed" in diff_text(diff)


def test_a_refused_configuration_is_a_change_with_the_mta_s_first_line() -> None:
    before = _results()
    old = _pick(before, "04-nullmx", "postfix")
    refused = ScenarioResult(file=old.file, name=old.name, mta="postfix", status=CONFIG_ERROR,
                             error="configuration error: relay (/tmp/new) on postfix: postfix: fatal: bad line\n"
                                   "  more\n--- relay: postfix did not start")
    diff = diff_results(before, _replaced(before, old, refused))
    (changed,) = diff.scenarios
    assert changed.after == "config-error: configuration error: relay (/tmp/new) on postfix: postfix: fatal: bad line"
    assert changed.changes  # every key reply of the baseline is gone
    assert diff.exit_code == EXIT_FAILED


def test_an_infrastructure_error_on_either_side_exits_3() -> None:
    before = _results()
    old = _pick(before, "08-relay-to-521", "postfix")
    broken = ScenarioResult(file=old.file, name=old.name, mta="postfix", status=ERROR, error="dns: no answer\nmore")
    for a, b in ((before, _replaced(before, old, broken)), (_replaced(before, old, broken), before)):
        diff = diff_results(a, b)
        assert diff.exit_code == EXIT_INFRA
        assert len(diff.errors) == 1 and diff.errors[0].endswith(
            "relay to a 521 host bouncing on a 5xx greeting [postfix]: dns: no answer")
        assert "infrastructure errors" in diff_text(diff)


def test_scenarios_on_one_side_only_are_added_or_removed() -> None:
    before = _results()
    gone = _pick(before, "04-nullmx", "exim")
    new = _pick(before, "08-relay-to-521", "opensmtpd")
    diff = diff_results([r for r in before if r is not new], [r for r in before if r is not gone])
    assert [(s.kind, s.file, s.mta) for s in diff.scenarios] == [
        (REMOVED, NULLMX, "exim"), (ADDED, "scenarios/08-relay-to-521-bounced.yaml", "opensmtpd")]
    assert diff.exit_code == EXIT_FAILED and diff.unchanged == 4
    text = diff_text(diff)
    assert "null MX recipient refused at RCPT [exim]: removed: was passed" in text
    assert "relay to a 521 host bouncing on a 5xx greeting [opensmtpd]: added: passed" in text
    assert text.splitlines()[-1] == ("0 changed, 1 added, 1 removed, 4 unchanged "
                                     "(baseline: 5, candidate: 5 scenario run(s))")


def test_results_are_matched_by_file_and_implementation_not_by_order() -> None:
    before = _results()
    diff = diff_results(before, [*reversed(before)])
    assert diff.identical
    renamed = [replace(r, file="./" + r.file) for r in before]  # the same file, named differently
    assert diff_results(before, renamed).identical


def test_the_same_scenario_twice_on_one_side_is_refused() -> None:
    before = _results()
    with pytest.raises(ValueError, match="twice"):
        diff_results([*before, before[0]], before)


def test_key_replies_label_sessions_by_step_when_there_are_several() -> None:
    session = _pick(_results(), "04-nullmx", "postfix").steps[0]
    assert isinstance(session.observation, SessionObservation)
    two_rcpts = (*session.observation.exchanges[:4], replace(session.observation.exchanges[3], code=250,
                                                             enhanced="2.1.5"))
    second = replace(session, step=2, observation=replace(session.observation, exchanges=two_rcpts))
    result = ScenarioResult(file="x.yaml", name="x", steps=[session, second])
    keys = key_replies(result)
    assert keys["step 1 RCPT"] == "556 5.1.10"
    assert keys["step 2 RCPT"] == "556 5.1.10" and keys["step 2 RCPT #2"] == "250 2.1.5"
    closed = replace(session, observation=replace(session.observation, exchanges=(
        Exchange("client->relay", 1, "CONNECT", None, None, None, "connection reset"),)))
    assert key_replies(ScenarioResult(file="x.yaml", name="x", steps=[closed])) == {"CONNECT": "closed"}


def test_other_steps_are_compared_as_the_matrix_shows_them() -> None:
    keys = key_replies(_pick(_results(), "08-relay-to-521", "postfix"))
    assert keys["step 2 hop"] == "relay->nomail CONNECT 521 5.3.2"
    assert keys["step 3 bounce"] == "bounced 5.3.2"
    assert keys["step 4 queue_state"] == "passed"  # the matrix shows nothing for "not queued": the status


def test_markdown_is_a_table_of_scenario_implementation_before_after() -> None:
    before = _results()
    old = _pick(before, "04-nullmx", "postfix")
    gone = _pick(before, "08-relay-to-521", "exim")
    after = [r for r in _replaced(before, old, replace(_with_session(old, {"RCPT": (250, "2.1.5")}), status=FAILED))
             if r is not gone]
    md = diff_markdown(diff_results(before, after))
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert rows[0] == "| scenario | implementation | before | after |"
    assert rows[1] == "| --- | --- | --- | --- |"
    assert len(rows) == 4  # header, separator, the changed scenario, the removed one
    for row in rows:
        assert row.replace("\\|", "").count("|") == 5, row
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[0].startswith("null MX recipient refused at RCPT") and cells[1] == "postfix"
    assert cells[2] == "passed<br>RCPT 556 5.1.10" and cells[3] == "failed<br>RCPT 250 2.1.5"
    removed = [c.strip() for c in rows[3].strip("|").split("|")]
    assert "(removed)" in removed[0] and removed[1:] == ["exim", "passed", "-"]
    assert "1 changed, 0 added, 1 removed, 4 unchanged" in md
    assert "No behaviour changed." in diff_markdown(diff_results(before, before))


def test_the_command_compares_two_results_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the missing out/ is made only inside the working directory
    before = _results()
    old = _pick(before, "04-nullmx", "postfix")
    a, b, md = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "out" / "diff.md"
    write_json(before, a)
    write_json(_replaced(before, old, _with_session(old, {"RCPT": (250, "2.1.5")})), b)
    assert main(["-q", "diff", str(a), str(a)]) == EXIT_OK
    capsys.readouterr()
    assert main(["-q", "diff", str(a), str(b), "--markdown", str(md)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "null MX recipient refused at RCPT [postfix]: RCPT 556 5.1.10 -> 250 2.1.5" in out
    assert "| null MX recipient refused at RCPT" in md.read_text()


def test_the_command_refuses_what_is_not_two_results_files(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "a.json"
    write_json(_results(), results)
    other = tmp_path / "notes.json"
    other.write_text('{"hello": 1}')
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "04-nullmx-recipient.yaml"
    for argv in (["diff"], ["diff", str(results)], ["diff", str(results), str(other)],
                 ["diff", str(results), str(scenario)], ["diff", str(results), str(results), "--mta", "exim"]):
        assert main(["-q", *argv]) == EXIT_USAGE, argv
        assert "harness: " in capsys.readouterr().err
