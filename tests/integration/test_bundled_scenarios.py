"""Every bundled scenario passes on every implementation, on real containers, and observes what it is
about. The whole matrix runs once per test session; the tests below read its results."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.expect.judge import judge
from harness.expect.results import PASSED, ScenarioResult
from harness.observe.observations import BounceObservation, HopObservation, QueueObservation
from harness.report.matrix import matrix_markdown
from harness.scenario.loader import load_scenarios
from harness.topology.mta import available
from tests.mutants import mutants

from .conftest import COMPOSE, ROOT, SCENARIOS

BUNDLED = sorted(SCENARIOS.glob("*.yaml"))
MTAS = available(COMPOSE)


def _codes(result: ScenarioResult, hop: str) -> list[tuple[str, int | None]]:
    return [(e.command, e.code) for e in result.exchanges if e.hop == hop]


def test_all_three_implementations_are_built() -> None:
    assert MTAS == ["postfix", "exim", "opensmtpd"]


@pytest.mark.parametrize("mta", MTAS)
@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_bundled_scenario_passes(matrix: dict[tuple[str, str], ScenarioResult], path: Path, mta: str) -> None:
    result = matrix.get((path.stem, mta))
    if result is None:
        pytest.fail(f"{path.stem} did not run on {mta}")
    assert result.status == PASSED, (result.error, [f.to_json() for f in result.failures])
    exchanges = result.exchanges
    assert exchanges, "a scenario that observed nothing cannot have passed"
    stem = path.stem
    if stem.startswith("01"):
        assert ("DATA", 354) in _codes(result, "client->mx")
        assert ("END-OF-DATA", 250) in _codes(result, "client->mx")
    elif stem.startswith("02"):
        assert ("DATA", 354) in _codes(result, "client->relay")
    elif stem.startswith("03"):
        assert _codes(result, "client->nomail") == [("CONNECT", 521)]
    elif stem.startswith("04") and mta != "opensmtpd":
        rcpt = next(e for e in exchanges if e.command == "RCPT")
        assert (rcpt.code, rcpt.enhanced) == (556, "5.1.10")
        assert not any(e.command == "DATA" for e in exchanges)
    elif stem.startswith("05") and mta != "opensmtpd":
        rcpt = next(e for e in exchanges if e.command == "RCPT")
        assert (rcpt.code, rcpt.enhanced) == (550, "5.7.27")
    elif stem.startswith(("06", "11", "12")):
        assert ("DATA", 354) in _codes(result, "relay->mx")
        assert ("END-OF-DATA", 250) in _codes(result, "relay->mx")
    elif stem.startswith(("07", "08")):
        assert _codes(result, "relay->nomail")[0] == ("CONNECT", 521)
    elif stem.startswith("09"):
        # The relay never connected anywhere: no hop at all besides the client's own session.
        assert {e.hop for e in exchanges} == {"client->relay"}
    elif stem.startswith("10"):
        assert _codes(result, "relay->nomail")[0] == ("CONNECT", 521)
    elif stem.startswith("13"):
        hops = [s.observation for s in result.steps if isinstance(s.observation, HopObservation)]
        refused, accepted = hops
        assert [e.code for e in refused.exchanges if e.command == "RCPT"] == [550]
        # Pipelining clients (Postfix, Exim) send DATA after the refused RCPT; it never gets a 354.
        assert not any(e.command == "DATA" and e.code == 354 for e in refused.exchanges)
        assert accepted.matched_by is not None and accepted.matched_by.startswith("Message-ID")
        if mta == "opensmtpd":
            # The point of the scenario: both messages crossed one connection.
            assert refused.session == accepted.session
        bounces = [s.observation for s in result.steps if isinstance(s.observation, BounceObservation)]
        assert len(bounces[0].dsns) == 1 and bounces[1].dsns == ()
    elif stem.startswith("15"):
        queued = [s.observation for s in result.steps if isinstance(s.observation, QueueObservation)]
        assert queued[0].of == "bounce" and len(queued[0].entries) == 1 and queued[0].entries[0].sender == ""


def test_no_expectation_is_vacuous(matrix: dict[tuple[str, str], ScenarioResult]) -> None:
    """Every expectation leaf of every bundled scenario, changed, fails against this run's observations."""
    scenarios = {p.stem: p for p in BUNDLED}
    loaded = {s.path.stem: s for s in load_scenarios(list(scenarios.values()))}
    survivors, count = [], 0
    for (stem, mta), result in matrix.items():
        applied = {i: step for i, step, o in loaded[stem].steps_for(mta) if not (o and o.skip)}
        for outcome in result.steps:
            if outcome.observation is None:
                continue
            step = applied[outcome.step]
            for what, mutant in mutants(step):
                count += 1
                if not judge(outcome.step, mutant, outcome.observation):
                    survivors.append(f"{stem} [{mta}] step {outcome.step}: {what}")
    assert count > 0
    assert survivors == [], f"{len(survivors)} of {count} mutants survived"


def test_compatibility_doc_is_current(matrix: dict[tuple[str, str], ScenarioResult]) -> None:
    """docs/compatibility.md is what this run observed; regenerate with `make docs` when it changes."""
    results = sorted(matrix.values(), key=lambda r: (Path(r.file).name, MTAS.index(r.mta)))
    expected = matrix_markdown(results, MTAS)
    current = (ROOT / "docs" / "compatibility.md").read_text(encoding="utf-8")
    assert current == expected, "docs/compatibility.md is stale: run `make docs` and commit it"
