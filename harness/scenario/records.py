"""The scenario's DNS records as models: the top-level ``dns`` list and what ``dns_change`` steps do
to it, checked at load time by rendering the zones as a run would, with stand-in addresses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dns.exception
import dns.name

from harness.dns.zones import ROLE_HOSTNAMES, render_zones, resolve_records, standard_records
from harness.errors import ScenarioError
from harness.scenario.checks import rdata_problem
from harness.scenario.context import BuildContext
from harness.scenario.model import UNREACHABLE_ROLE, DnsRecord
from harness.scenario.validate import JsonPath

__all__ = ["DEFAULT_TTL", "RecordBuilder"]

DEFAULT_TTL = 300
# Stand-in container addresses for checking the zones at load time; the real ones differ per run, the
# verdict on the records does not (every address is an IPv4 address in the run's /24).
_CHECK_NET = "192.0.2."


class RecordBuilder(BuildContext):
    """Builds and checks DNS records. ``records`` is what the scenario's server serves at the point the
    builder has reached: the top-level records, then as each dns_change step leaves them."""

    records: tuple[DnsRecord, ...] = ()
    # (name, type) keys a dns_change step replaced or removed: the standard records under them are gone.
    replaced: frozenset[tuple[str, str]] = frozenset()

    def dns_record(self, here: JsonPath, rec: dict[str, Any]) -> DnsRecord:
        rtype: str = rec["type"]
        value: str | None = rec.get("value")
        address_of: str | None = rec.get("address_of")
        if value is None and address_of is None:
            raise self.fail(self.at(*here), "missing required key 'value' (or 'address_of') in DNS record")
        if value is not None and address_of is not None:
            raise self.fail(self.at_key(*here, "address_of"),
                            "a DNS record takes either 'value' or 'address_of', not both")
        if address_of is not None:
            if rtype != "A":
                raise self.fail(self.at_key(*here, "address_of"),
                                f"'address_of' is only for A records (the run's network is IPv4), "
                                f"not {rtype} records")
            if address_of != UNREACHABLE_ROLE and address_of not in self.roles:
                raise self.fail(self.at(*here, "address_of"), f"unknown role {address_of!r} in address_of "
                                f"(expected one of: {', '.join(self.roles)}, or {UNREACHABLE_ROLE} for an "
                                "address nothing answers on)")
        if value is not None:
            self.check(rdata_problem(rtype, value), *here, "value")
        return DnsRecord(
            name=rec["name"],
            rtype=rtype,
            value=value,
            address_of=address_of,
            ttl=rec.get("ttl", DEFAULT_TTL),
            mark=self.at(*here),
        )

    def record_name(self, text: str, here: JsonPath) -> str:
        """``text`` (at ``here``) as an absolute lower-case name."""
        try:
            return dns.name.from_text(text, origin=dns.name.root).canonicalize().to_text()
        except dns.exception.DNSException as exc:
            raise self.fail(self.at(*here), f"invalid DNS name {text!r}: {exc}") from None

    def change_records(self, replace: Sequence[DnsRecord], remove: Sequence[tuple[str, str]],
                       here: JsonPath) -> None:
        """Apply a dns_change step at ``here`` to ``records``, checked as the run will render them."""
        gone = {_key(r) for r in replace} | set(remove)
        self.replaced |= gone
        self.records = (*(r for r in self.records if _key(r) not in gone), *replace)
        self.check_zones(self.records, here)

    def check_zones(self, records: tuple[DnsRecord, ...], here: JsonPath = ("dns",)) -> None:
        """Render the zones as a run would (zones.resolve_records and render_zones, with stand-in
        addresses): names, placement and conflicts with each other and the standard records."""
        hosts = [*ROLE_HOSTNAMES, *(r for r in self.roles if r not in ROLE_HOSTNAMES), UNREACHABLE_ROLE]
        addresses = {role: f"{_CHECK_NET}{i}" for i, role in enumerate(hosts, start=2)}
        standard = standard_records({role: addresses[role] for role in ROLE_HOSTNAMES})
        # Added roles are named <role>.hosts.test, as topology.standard_plan names them.
        mark = standard[0].mark
        added = [DnsRecord(f"{role}.hosts.test.", "A", None, role, 60, mark)
                 for role in self.roles if role not in ROLE_HOSTNAMES]
        generated = [r for r in [*standard, *added] if _key(r) not in self.replaced]
        try:
            render_zones(resolve_records([*generated, *records], addresses), ns_address=addresses["dns"])
        except ScenarioError as exc:
            if exc.path != self.source.file:
                # Blamed on a generated record: the scenario's records are what make the zones wrong.
                raise self.fail(self.at(*here), exc.detail) from None
            raise


def _key(record: DnsRecord) -> tuple[str, str]:
    try:
        return (dns.name.from_text(record.name, origin=dns.name.root).canonicalize().to_text(), record.rtype)
    except dns.exception.DNSException:
        return (record.name.lower(), record.rtype)  # render_zones then says what is wrong with it
