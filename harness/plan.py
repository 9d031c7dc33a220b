"""From a scenario and the implementation under test to what must run: the topology plan and the
zones the dns container serves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.dns.served import addresses_serving
from harness.dns.zones import (
    ROLE_HOSTNAMES,
    STANDARD_MARK,
    ResolvedRecord,
    nsd_zones_conf,
    render_zones,
    resolve_records,
    standard_records,
)
from harness.scenario.model import DnsRecord, Scenario
from harness.topology.topology import DNS_ROLE, RoleChange, TopologyPlan, ZoneSetup, standard_plan


@dataclass
class ScenarioPlan:
    scenario: Scenario | None
    mta: str
    topology: TopologyPlan
    # Filled when addresses are known (just before the dns container starts).
    records: list[ResolvedRecord] = field(default_factory=list)

    def zone_setup(self, addresses: Mapping[str, str]) -> ZoneSetup:
        extra = list(self.scenario.dns) if self.scenario else []
        # Roles a scenario adds get an A record under hosts.test, so MX records can name them.
        added = [DnsRecord(f"{h.hostname}.", "A", None, h.role, 60, STANDARD_MARK)
                 for h in self.topology.hosts if h.role not in ROLE_HOSTNAMES]
        standard = {r: a for r, a in addresses.items() if r in ROLE_HOSTNAMES}
        self.records = resolve_records([*standard_records(standard), *added, *extra], addresses)
        zones = render_zones(self.records, ns_address=addresses[DNS_ROLE])
        files = {z.filename: z.text for z in zones}
        files["zones.conf"] = nsd_zones_conf(zones)
        return ZoneSetup(files=files, probe_zone="example.test.")

    def domain_addresses(self, domain: str) -> set[str]:
        """Addresses that serve ``domain`` by the scenario's records (harness.dns.served)."""
        return addresses_serving(self.records, domain)


def role_changes(scenario: Scenario | None, mta: str) -> dict[str, RoleChange]:
    if scenario is None:
        return {}
    changes = {}
    for role, override in scenario.roles.items():
        role_mta = override.mta or mta
        changes[role] = RoleChange(
            config_dir=override.config_dirs.get(role_mta),
            settings=dict(override.settings.get(role_mta, {})),
            like=override.like,
            mta=override.mta,
        )
    for role, tls in scenario.tls.items():
        # A role offering TLS is a changed role even when nothing else about it changes.
        changes[role] = replace(changes.get(role, RoleChange()), tls=tls)
    return changes


def plan_scenario(scenario: Scenario | None, compose_dir: Path, *, mta: str = "postfix") -> ScenarioPlan:
    topology = standard_plan(compose_dir, ROLE_HOSTNAMES, mta=mta, changes=role_changes(scenario, mta))
    return ScenarioPlan(scenario, mta, topology)
