"""How pairs are dealt to topologies: one per topology key, in the order their first pair appears."""

from __future__ import annotations

from pathlib import Path

from harness.runner import groups_of, implementations_for
from harness.scenario.loader import load_scenarios
from harness.scenario.model import Scenario
from harness.shard import topology_key

ROOT = Path(__file__).resolve().parents[2]
MTAS = ["postfix", "exim", "opensmtpd"]


def _pairs() -> list[tuple[Scenario, str]]:
    scenarios = load_scenarios([ROOT / "scenarios"])
    return [(s, m) for s in scenarios for m in implementations_for(s, MTAS)]


def test_one_topology_per_key_and_every_pair_once() -> None:
    pairs = _pairs()
    groups = groups_of(pairs, fresh=False)
    assert [len({topology_key(s, m) for s, m in g}) for g in groups] == [1] * len(groups)
    assert len(groups) == len({topology_key(s, m) for s, m in pairs})
    assert sorted(id(s) for g in groups for s, _ in g) == sorted(id(s) for s, _ in pairs)


def test_groups_in_the_order_their_first_pair_appears() -> None:
    pairs = _pairs()
    firsts = [g[0] for g in groups_of(pairs, fresh=False)]
    assert firsts == sorted(firsts, key=pairs.index)


def test_fresh_is_one_pair_per_topology_in_order() -> None:
    pairs = _pairs()
    assert groups_of(pairs, fresh=True) == [[p] for p in pairs]
