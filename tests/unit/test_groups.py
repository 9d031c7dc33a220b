"""How pairs are dealt to topologies: one per topology key, in the order their first pair appears."""

from __future__ import annotations

from pathlib import Path

from harness.runner import estimated_s, groups_of, implementations_for, longest_first
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


def test_the_longest_group_starts_first_and_ties_keep_their_order() -> None:
    pairs = _pairs()
    groups = groups_of(pairs, fresh=False)
    order = longest_first(groups)
    assert sorted(order) == list(range(len(groups)))
    costs = [sum(estimated_s(s, m) for s, m in groups[i]) for i in order]
    assert costs == sorted(costs, reverse=True)
    # A shared group of many scenarios goes before any group of one.
    assert len(groups[order[0]]) > 1
    ties = [i for i in order if costs[order.index(i)] == costs[-1]]
    assert ties == sorted(ties)


def test_a_scenario_is_estimated_by_what_it_waits_out(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("name: w\ndescription: d\nsteps:\n"
                    "  - smtp: {host: mx, mail_from: a@origin.test, rcpt_to: b@example.test}\n"
                    "  - no_delivery:\n      host: mx\n      within: 9\n"
                    "      per_mta: {exim: {reason: r, skip: true}}\n")
    [scenario] = load_scenarios([path])
    assert estimated_s(scenario, "postfix") > 9 > estimated_s(scenario, "exim")
