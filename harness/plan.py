"""From a scenario and the implementation under test to what must run: the topology plan and the
zones the dns container serves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.dns.dnssec import ZoneSigner, unbound_conf
from harness.dns.served import addresses_serving
from harness.dns.tlsa import tlsa_name, tlsa_rdata
from harness.dns.zones import (
    DEFAULT_TTL,
    ROLE_HOSTNAMES,
    STANDARD_MARK,
    ResolvedRecord,
    nsd_zones_conf,
    render_zones,
    resolve_records,
    standard_records,
)
from harness.errors import InfrastructureError
from harness.scenario.model import DnsRecord, Scenario
from harness.tls.ca import Credentials
from harness.topology.topology import DNS_ROLE, RoleChange, TopologyPlan, ZoneSetup, standard_plan


@dataclass
class ScenarioPlan:
    scenario: Scenario | None
    mta: str
    topology: TopologyPlan
    # Filled when addresses are known (just before the dns container starts).
    records: list[ResolvedRecord] = field(default_factory=list)

    def zone_setup(self, addresses: Mapping[str, str], *, signer: ZoneSigner | None = None,
                   credentials: Mapping[str, Credentials] | None = None) -> ZoneSetup:
        """The dns container's files for these addresses: zones signed by ``signer`` (the run's keys, a
        scenario with dnssec:), with a TLSA record for each role whose ``tls:`` asks for one, from its
        certificate in ``credentials``; and the resolver's configuration when there is a signer."""
        extra = list(self.scenario.dns) if self.scenario else []
        extra += self.tlsa_records(credentials or {})
        extra += self.mta_sts_records()
        # Roles a scenario adds get an A record under hosts.test, so MX records can name them.
        added = [DnsRecord(f"{h.hostname}.", "A", None, h.role, 60, STANDARD_MARK)
                 for h in self.topology.hosts if h.role not in ROLE_HOSTNAMES]
        standard = {r: a for r, a in addresses.items() if r in ROLE_HOSTNAMES}
        self.records = resolve_records([*standard_records(standard), *added, *extra], addresses)
        zones = render_zones(self.records, ns_address=addresses[DNS_ROLE], signer=signer)
        files = {z.filename: z.text for z in zones}
        files["zones.conf"] = nsd_zones_conf(zones)
        resolver = (unbound_conf(signer.trust_anchors(), nsd_address=addresses[DNS_ROLE])
                    if signer is not None else None)
        return ZoneSetup(files=files, probe_zone="example.test.", resolver_conf=resolver)

    def tlsa_records(self, credentials: Mapping[str, Credentials]) -> list[DnsRecord]:
        """``_25._tcp.<host> TLSA 3 1 1`` for each role whose tls: entry has ``tlsa:``, at that entry."""
        if self.scenario is None:
            return []
        hostnames = {h.role: h.hostname for h in self.topology.hosts}
        records = []
        for role, tls in sorted(self.scenario.tls.items()):
            if tls.tlsa is None:
                continue
            if role not in credentials:
                raise InfrastructureError(f"{role}: a TLSA record needs its certificate, and none was issued")
            records.append(DnsRecord(tlsa_name(hostnames[role]), "TLSA",
                                     tlsa_rdata(credentials[role].cert_pem, tls.tlsa), None, DEFAULT_TTL,
                                     tls.mark or STANDARD_MARK))
        return records

    def mta_sts_records(self) -> list[DnsRecord]:
        """``_mta-sts.<domain> TXT "v=STSv1; id=..."`` for a scenario with mta_sts: (RFC 8461 section 3.1);
        the policy host's own A record is an added role's (mta-sts.<domain>)."""
        if self.scenario is None or self.scenario.mta_sts is None:
            return []
        policy = self.scenario.mta_sts
        return [DnsRecord(f"_mta-sts.{policy.domain}.", "TXT", f'"v=STSv1; id={policy.policy_id}"', None,
                          DEFAULT_TTL, policy.mark or STANDARD_MARK)]

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
    topology = standard_plan(compose_dir, ROLE_HOSTNAMES, mta=mta, changes=role_changes(scenario, mta),
                             dnssec=scenario.dnssec if scenario is not None else None,
                             mta_sts=scenario.mta_sts if scenario is not None else None)
    return ScenarioPlan(scenario, mta, topology)
