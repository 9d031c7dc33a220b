"""Comparing two results of one scenario field by field (the isolation test's judge)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from harness.expect.results import FAILED, PASSED, ScenarioResult, result_from_json
from harness.observe.observations import (
    BounceObservation,
    FoundDsn,
    QueuedMessage,
    QueueObservation,
    SessionObservation,
)
from harness.report.compare import differences

SAMPLE = Path(__file__).parent / "fixtures" / "results" / "matrix-sample.json"


def _results():  # type: ignore[no-untyped-def]
    return [result_from_json(r) for r in json.loads(SAMPLE.read_text())["scenarios"]]


def test_a_result_agrees_with_itself_and_with_other_names_for_the_same_things() -> None:
    for result in _results():
        assert differences(result, result) == []
    bounced = next(r for r in _results() if r.file.endswith("08-relay-to-521-bounced.yaml") and r.mta == "postfix")
    step = next(s for s in bounced.steps if isinstance(s.observation, BounceObservation))
    assert isinstance(step.observation, BounceObservation)
    dsn = step.observation.dsns[0]
    moved = FoundDsn("elsewhere", dsn.about, dsn.per_message, tuple(
        {k: v.replace("172.", "10.") for k, v in block.items()} for block in dsn.recipients))
    other = replace(bounced, steps=[replace(s, observation=replace(s.observation, dsns=(moved,)))
                                    if s is step else s for s in bounced.steps])
    assert differences(bounced, other) == []


def test_a_different_reply_code_is_a_difference() -> None:
    result = next(r for r in _results() if r.mta == "postfix")
    step = next(s for s in result.steps if isinstance(s.observation, SessionObservation))
    assert isinstance(step.observation, SessionObservation)
    changed = tuple(replace(e, code=451) if e.command == "RCPT" else e for e in step.observation.exchanges)
    other = replace(result, steps=[replace(s, observation=replace(s.observation, exchanges=changed))
                                   if s is step else s for s in result.steps])
    (difference,) = differences(result, other)
    assert difference.startswith(f"step {step.step} (smtp)") and "451" in difference


def test_a_passed_queue_steps_state_is_timing_a_failed_ones_and_the_count_are_not() -> None:
    result = next(r for r in _results() if any(isinstance(s.observation, QueueObservation) and s.observation.entries
                                               for s in r.steps))
    step = next(s for s in result.steps if isinstance(s.observation, QueueObservation) and s.observation.entries)
    assert isinstance(step.observation, QueueObservation)

    def with_(status: str, entries: tuple[QueuedMessage, ...]) -> ScenarioResult:
        obs = replace(step.observation, entries=entries)
        return replace(result, steps=[replace(s, status=status, observation=obs) if s is step else s
                                      for s in result.steps])

    entry = step.observation.entries[0]
    active, frozen = (replace(entry, state="active"),), (replace(entry, state="frozen"),)
    assert differences(with_(PASSED, active), with_(PASSED, frozen)) == []
    assert differences(with_(PASSED, active), with_(PASSED, (*active, *frozen)))
    assert differences(with_(FAILED, active), with_(FAILED, frozen))
