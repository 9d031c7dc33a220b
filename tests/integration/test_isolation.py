"""Sharing a topology changes no result: every bundled scenario on all three MTAs, once on a fresh
topology each and once on shared topologies in a shuffled order (the `matrix` fixture), agree field
by field: status, every observed reply code, copies, DSN fields, queue states, connections."""

from __future__ import annotations

from pathlib import Path

from harness.expect.results import ScenarioResult
from harness.report.compare import differences
from harness.runner import RunContext, default_jobs, run_all
from harness.scenario.loader import load_scenarios
from harness.topology.mta import available

from .conftest import COMPOSE, SCENARIOS


def test_shared_topologies_give_the_results_of_fresh_ones(
        run_context: RunContext, matrix: dict[tuple[str, str], ScenarioResult]) -> None:
    run_context.fresh, run_context.jobs = True, default_jobs()
    try:
        fresh = run_all(run_context, load_scenarios([SCENARIOS]), mtas=available(COMPOSE))
    finally:
        run_context.fresh = False
    assert len(fresh) == len(matrix)
    disagreements = []
    for result in fresh:
        shared = matrix[(Path(result.file).stem, result.mta)]
        disagreements += [f"{Path(result.file).stem} [{result.mta}]: {d}" for d in differences(result, shared)]
    assert disagreements == [], "\n".join(disagreements)


def test_every_way_a_role_changes_between_two_scenarios(
        run_context: RunContext, matrix: dict[tuple[str, str], ScenarioResult]) -> None:
    """On one Postfix topology (variants run in the order they first appear): a role added (10:
    backup), only removed again (13, 02: the standard roles, nothing started), a role's implementation
    replaced (12: an Exim mx), then the mx back and the relay's settings changed (08). Each scenario
    gives what it gives on a topology of its own (the `matrix` fixture's results agree with fresh
    ones, test above)."""
    by_stem = {p.stem[:2]: p for p in SCENARIOS.glob("*.yaml")}
    scenarios = load_scenarios([by_stem[k] for k in ("10", "13", "12", "08", "02")])
    run_context.fresh, run_context.jobs = False, 1
    results = run_all(run_context, scenarios, pairs=[(s, "postfix") for s in scenarios])
    disagreements = []
    for result in results:
        disagreements += [f"{Path(result.file).stem}: {d}"
                          for d in differences(matrix[(Path(result.file).stem, "postfix")], result)]
    assert disagreements == [], "\n".join(disagreements)
