"""How pairs are dealt to topologies: one per sharing key, in the order their first pair appears; in
a topology, the pairs of the same containers (``container_key``) one after another, and among them
those of one exact topology (``topology_key``)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path

from harness.runner import implementations_for
from harness.scenario.loader import load_scenarios
from harness.scenario.model import Scenario
from harness.schedule import (
    RECONFIGURE_COST_S,
    REPLACE_COST_S,
    RESET_COST_S,
    TOPOLOGY_COST_S,
    estimated_s,
    group_estimated_s,
    groups_of,
    longest_first,
)
from harness.shard import container_key, key_text, sharing_key, topology_key

ROOT = Path(__file__).resolve().parents[2]
MTAS = ["postfix", "exim", "opensmtpd"]


def bundled_pairs() -> list[tuple[Scenario, str]]:
    """Every bundled scenario on every implementation it runs on, in the order `make scenarios` has."""
    scenarios = load_scenarios([ROOT / "scenarios"])
    return [(s, m) for s in scenarios for m in implementations_for(s, MTAS)]


def test_one_topology_per_sharing_key_and_every_pair_once() -> None:
    pairs = bundled_pairs()
    groups = groups_of(pairs, fresh=False)
    assert [len({sharing_key(s, m) for s, m in g}) for g in groups] == [1] * len(groups)
    assert len(groups) == len({sharing_key(s, m) for s, m in pairs})
    assert sorted(id(s) for g in groups for s, _ in g) == sorted(id(s) for s, _ in pairs)
    # The bundled TLS and role-change scenarios share the standard topology: fewer topologies than
    # exact topologies.
    assert len(groups) < len({topology_key(s, m) for s, m in pairs})


def _runs_once_in_a_row(group: list[tuple[Scenario, str]], key: Callable[[Scenario, str], Hashable],
                        pairs: list[tuple[Scenario, str]]) -> list[str]:
    """The keys of ``group`` in the order they run, after checking that each runs once in a row, in the
    order of its first pair in ``pairs``."""
    runs = [key_text(key(s, m)) for s, m in group]
    changes = [k for i, k in enumerate(runs) if i == 0 or runs[i - 1] != k]
    assert len(changes) == len(set(changes)), changes  # none comes back later
    firsts = [next(p for p in group if key_text(key(*p)) == k) for k in changes]
    assert firsts == sorted(firsts, key=pairs.index)
    return changes


def test_in_a_group_the_same_containers_and_each_exact_topology_run_once_in_a_row() -> None:
    pairs = bundled_pairs()
    for group in groups_of(pairs, fresh=False):
        for containers in _runs_once_in_a_row(group, container_key, pairs):
            same = [p for p in group if key_text(container_key(*p)) == containers]
            for exact in _runs_once_in_a_row(same, topology_key, pairs):
                # Within an exact topology, pairs keep their input order.
                members = [p for p in same if key_text(topology_key(*p)) == exact]
                assert members == sorted(members, key=pairs.index)


def test_scenarios_on_the_same_containers_run_together_whatever_their_tls() -> None:
    """On Exim: 01 (plain), 11 (mx on Postfix), 23 (mx requires TLS), 30 (mx on Postfix with TLS): the
    Exim mx's scenarios, then the Postfix mx's, so mx is replaced once, not three times."""
    by_name = {s.path.name[:2]: s for s in load_scenarios([ROOT / "scenarios"])}
    pairs = [(by_name[n], "exim") for n in ("01", "11", "23", "30")]
    [group] = groups_of(pairs, fresh=False)
    assert [s.path.name[:2] for s, _ in group] == ["01", "23", "11", "30"]


def test_groups_in_the_order_their_first_pair_appears() -> None:
    pairs = bundled_pairs()
    firsts = [g[0] for g in groups_of(pairs, fresh=False)]
    assert firsts == sorted(firsts, key=pairs.index)


def test_fresh_is_one_pair_per_topology_in_order() -> None:
    pairs = bundled_pairs()
    assert groups_of(pairs, fresh=True) == [[p] for p in pairs]


def test_the_longest_group_starts_first_and_ties_keep_their_order() -> None:
    pairs = bundled_pairs()
    groups = groups_of(pairs, fresh=False)
    order = longest_first(groups)
    assert sorted(order) == list(range(len(groups)))
    costs = [group_estimated_s(groups[i]) for i in order]
    assert costs == sorted(costs, reverse=True)
    # A shared group of many scenarios goes before any group of one.
    assert len(groups[order[0]]) > 1
    ties = [i for i in order if costs[order.index(i)] == costs[-1]]
    assert ties == sorted(ties)


def test_a_group_is_estimated_with_a_replacement_per_change_of_containers() -> None:
    by_name = {s.path.name[:2]: s for s in load_scenarios([ROOT / "scenarios"])}
    plain, tls, other = (by_name["01"], "exim"), (by_name["23"], "exim"), (by_name["11"], "exim")
    scenarios = estimated_s(*plain) * 2 + estimated_s(*tls)
    assert group_estimated_s([plain, plain, tls]) == TOPOLOGY_COST_S + RESET_COST_S + RECONFIGURE_COST_S + scenarios
    assert group_estimated_s([plain, tls, plain]) == TOPOLOGY_COST_S + 2 * RECONFIGURE_COST_S + scenarios
    scenarios = estimated_s(*plain) * 2 + estimated_s(*other)
    assert group_estimated_s([plain, other, plain]) == TOPOLOGY_COST_S + 2 * REPLACE_COST_S + scenarios


def test_a_scenario_is_estimated_by_what_it_waits_out(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("name: w\ndescription: d\nsteps:\n"
                    "  - smtp: {host: mx, mail_from: a@origin.test, rcpt_to: b@example.test}\n"
                    "  - no_delivery:\n      host: mx\n      within: 9\n"
                    "      per_mta: {exim: {reason: r, skip: true}}\n")
    [scenario] = load_scenarios([path])
    assert estimated_s(scenario, "postfix") > 9 > estimated_s(scenario, "exim")
