"""From a scenario to what must run: the topology plan and the zones the dns container serves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.dns.zones import (
    ROLE_HOSTNAMES,
    ResolvedRecord,
    nsd_zones_conf,
    render_zones,
    resolve_records,
    standard_records,
)
from harness.scenario.model import Scenario
from harness.topology.topology import DNS_ROLE, TopologyPlan, ZoneSetup, standard_plan


@dataclass
class ScenarioPlan:
    scenario: Scenario | None
    topology: TopologyPlan
    # Filled when addresses are known (just before the dns container starts).
    records: list[ResolvedRecord] = field(default_factory=list)
    declared: list[ResolvedRecord] = field(default_factory=list)

    def zone_setup(self, addresses: Mapping[str, str]) -> ZoneSetup:
        extra = list(self.scenario.dns) if self.scenario else []
        self.records = resolve_records([*standard_records(addresses), *extra], addresses)
        self.declared = self.records
        zones = render_zones(self.records, ns_address=addresses[DNS_ROLE])
        files = {z.filename: z.text for z in zones}
        files["zones.conf"] = nsd_zones_conf(zones)
        return ZoneSetup(files=files, probe_zone="example.test.")


def plan_scenario(scenario: Scenario | None, compose_dir: Path, *, mta: str = "postfix") -> ScenarioPlan:
    overrides: dict[str, Path] = {}
    if scenario is not None:
        overrides = {role: o.config_dir for role, o in scenario.roles.items()}
    topology = standard_plan(compose_dir, ROLE_HOSTNAMES, mta=mta, overrides=overrides)
    return ScenarioPlan(scenario, topology)
