"""No expectation of a bundled scenario is vacuous: judged against observations recorded from real
runs of every bundled scenario on every implementation, each step passes as written, and every
mutant of it (each expectation leaf changed, see tests/mutants.py) fails.

The recording is tests/unit/fixtures/observations/bundled.json (tests/fixtures_tools/record_observations.py);
the integration test test_bundled_scenarios.py runs the same check on a fresh run's observations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.expect.judge import judge
from harness.observe.observations import observation_from_json
from harness.scenario.loader import load_scenarios
from tests.mutants import mutants

ROOT = Path(__file__).resolve().parents[2]
RECORDED = Path(__file__).parent / "fixtures" / "observations" / "bundled.json"


def survivors_and_count(records: list[dict[str, object]]) -> tuple[list[str], int]:
    scenarios = {s.path.name: s for s in load_scenarios([ROOT / "scenarios"])}
    survivors: list[str] = []
    count = 0
    for record in records:
        scenario = scenarios[str(record["file"])]
        mta = str(record["mta"])
        applied = {i: step for i, step, override in scenario.steps_for(mta) if not (override and override.skip)}
        steps = record["steps"]
        assert isinstance(steps, list)
        for entry in steps:
            index = entry["step"]
            observation = observation_from_json(entry["observation"])
            step = applied[index]
            original = judge(index, step, observation)
            assert original == [], f"{scenario.path.name} [{mta}] step {index} fails as written: {original}"
            for what, mutant in mutants(step):
                count += 1
                if not judge(index, mutant, observation):
                    survivors.append(f"{scenario.path.name} [{mta}] step {index} ({step.kind}): {what}")
    return survivors, count


def test_every_mutated_expectation_fails_on_recorded_observations() -> None:
    if not RECORDED.is_file():
        pytest.fail(f"{RECORDED} is missing: record it with tests/fixtures_tools/record_observations.py")
    records = json.loads(RECORDED.read_text(encoding="utf-8"))["scenarios"]
    survivors, count = survivors_and_count(records)
    bundled = {p.name for p in (ROOT / "scenarios").glob("*.yaml")}
    assert {r["file"] for r in records} == bundled, "record observations of every bundled scenario"
    assert count > 0
    assert survivors == [], f"{len(survivors)} of {count} mutants survived:\n" + "\n".join(survivors)
