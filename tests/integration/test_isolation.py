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

