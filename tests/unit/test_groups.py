"""How pairs are dealt to topologies: one per implementation, each variant's scenarios together."""

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


def test_one_topology_per_implementation_and_every_pair_once() -> None:
    pairs = _pairs()
    groups = groups_of(pairs, fresh=False)
    assert [{m for _, m in g} for g in groups] == [{"postfix"}, {"exim"}, {"opensmtpd"}]
    assert sorted(id(s) for g in groups for s, _ in g) == sorted(id(s) for s, _ in pairs)


def test_a_variant_runs_in_one_stretch_so_its_roles_start_once() -> None:
    for group in groups_of(_pairs(), fresh=False):
        keys = [topology_key(s, m) for s, m in group]
        stretches = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert len(stretches) == len(set(keys)), stretches


def test_spare_jobs_split_an_implementation_by_whole_variants() -> None:
    pairs = _pairs()
    groups = groups_of(pairs, fresh=False, jobs=6)
    assert len(groups) == 6
    owner: dict[object, int] = {}
    for i, group in enumerate(groups):
        assert len({m for _, m in group}) == 1
        for s, m in group:
            assert owner.setdefault(topology_key(s, m), i) == i  # a variant never spans two topologies


def test_fresh_is_one_pair_per_topology_in_order() -> None:
    pairs = _pairs()
    assert groups_of(pairs, fresh=True) == [[p] for p in pairs]
