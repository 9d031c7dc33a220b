"""Every bundled scenario passes on real containers, and what it observed is what the scenario is about."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.expect.results import PASSED, ScenarioResult
from harness.runner import RunContext, run_scenario
from harness.scenario.loader import load_scenario

from .conftest import SCENARIOS

BUNDLED = sorted(SCENARIOS.glob("*.yaml"))


def _run(ctx: RunContext, path: Path) -> ScenarioResult:
    result = run_scenario(ctx, load_scenario(path))
    assert result.status == PASSED, (result.error, [f.to_json() for f in result.failures])
    return result


def _codes(result: ScenarioResult, hop: str) -> list[tuple[str, int | None]]:
    return [(e.command, e.code) for e in result.exchanges if e.hop == hop]


def test_bundled_scenarios_are_all_here() -> None:
    assert [p.name for p in BUNDLED][:5] == [
        "01-direct-354.yaml", "02-relay-354.yaml", "03-nomail-521.yaml", "04-nullmx-recipient.yaml",
        "05-nullmx-sender.yaml"]


@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_bundled_scenario_passes(run_context: RunContext, path: Path) -> None:
    result = _run(run_context, path)
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
    elif stem.startswith("04"):
        rcpt = next(e for e in exchanges if e.command == "RCPT")
        assert (rcpt.code, rcpt.enhanced) == (556, "5.1.10")
        assert not any(e.command == "DATA" for e in exchanges)
    elif stem.startswith("05"):
        rcpt = next(e for e in exchanges if e.command == "RCPT")
        assert (rcpt.code, rcpt.enhanced) == (550, "5.7.27")
    elif stem.startswith("06"):
        assert ("DATA", 354) in _codes(result, "relay->mx")
        assert ("END-OF-DATA", 250) in _codes(result, "relay->mx")
    elif stem.startswith(("07", "08")):
        assert _codes(result, "relay->nomail")[0] == ("CONNECT", 521)
    elif stem.startswith("09"):
        # The relay never connected anywhere: no hop at all besides the client's own session.
        assert {e.hop for e in exchanges} == {"client->relay"}
    elif stem.startswith("10"):
        assert _codes(result, "relay->nomail")[0] == ("CONNECT", 521)
        assert _codes(result, "relay->backup")[0] == ("CONNECT", 521)
