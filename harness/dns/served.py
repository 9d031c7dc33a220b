"""What the scenario's DNS server serves at a moment of the scenario: its records, as dns_change steps
left them, and the dns_fault steps in force. Pure: it renders the dns container's files; the runner
writes them and makes the server take them.

Two servers share the work, so that a scenario without such faults talks to NSD alone:

- NSD answers from the zone files. A fault on a whole name (every type) with SERVFAIL or NXDOMAIN is
  NSD's own behaviour (harness.dns.zones.faulted_zone_files).
- dnsdist, in front of NSD, answers a fault that NSD cannot: one record type only, or no answer at all
  (a timeout). It gets a rule per such fault and passes every other query to NSD unchanged. The
  dns image starts it only when ``dnsdist.conf`` is not empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dns.name
import dns.rdatatype

from harness.dns.dnssec import ZoneSigner
from harness.dns.zones import (
    HARNESS_ZONE,
    HOSTMASTER,
    NS_HOST,
    SOA_MINIMUM,
    ResolvedRecord,
    faulted_zone_files,
    zone_origin,
)

__all__ = ["DNSDIST_CONF", "FAULT_LOG_PREFIX", "DnsFault", "ServedDns", "addresses_serving", "dnsdist_conf"]

DNSDIST_CONF = "dnsdist.conf"
# How each query a dnsdist rule answered is logged (docker logs of the dns role; reports show them).
FAULT_LOG_PREFIX = "dns_fault: "
# Where NSD listens while dnsdist answers on port 53 (compose/dns/dns-start).
NSD_BEHIND = "127.0.0.1:5300"
# Fault names go into dnsdist's Lua configuration: the loader admits only these characters.
_SAFE_NAME = re.compile(r"([a-z0-9_-]+\.)+")


@dataclass(frozen=True)
class DnsFault:
    """A dns_fault step in force: ``name`` (absolute, lower case) and every name below it answer
    ``answer`` (servfail, nxdomain, timeout) for queries of ``rtype``, or of every type when None."""

    name: str
    rtype: str | None
    answer: str

    @property
    def by_nsd(self) -> bool:
        """NSD can serve it: a whole name failing, not one type, and with an answer."""
        return self.rtype is None and self.answer in ("servfail", "nxdomain")

    def describe(self) -> str:
        what = f"{self.rtype} queries for {self.name}" if self.rtype else self.name
        return f"{'no answer' if self.answer == 'timeout' else self.answer.upper()} for {what}"


@dataclass
class ServedDns:
    records: list[ResolvedRecord]
    faults: dict[tuple[str, str | None], DnsFault] = field(default_factory=dict)
    # The run's zone keys (a scenario with dnssec:): every rendering is signed with them.
    signer: ZoneSigner | None = None

    def fault(self, name: str, rtype: str | None, answer: str) -> None:
        """A dns_fault step: the latest step about a name (and type) wins. ``normal`` lifts the fault on
        that name and type; without a type, every fault on the name."""
        if rtype is None:
            for key in [k for k in self.faults if k[0] == name]:
                del self.faults[key]
        else:
            self.faults.pop((name, rtype), None)
        if answer != "normal":
            self.faults[(name, rtype)] = DnsFault(name, rtype, answer)

    def change(self, replace: Sequence[ResolvedRecord], remove: Iterable[tuple[str, str]]) -> None:
        """A dns_change step: each (name, type) in ``replace`` gets exactly those records, and each in
        ``remove`` none."""
        gone = {(r.name, r.rtype) for r in replace} | set(remove)
        self.records = [r for r in self.records if (r.name, r.rtype) not in gone] + list(replace)

    def faulted_names(self) -> list[str]:
        return sorted({f.name for f in self.faults.values()})

    def answering(self) -> list[ResolvedRecord]:
        """The records the server answers as declared: those no fault touches."""
        def touched(record: ResolvedRecord) -> bool:
            name = dns.name.from_text(record.name)
            return any(name.is_subdomain(dns.name.from_text(f.name))
                       and (f.rtype is None or f.rtype == record.rtype) for f in self.faults.values())
        return [r for r in self.records if not touched(r)]

    def files(self, *, ns_address: str, serial: int = 1) -> dict[str, str]:
        """The dns container's files under /etc/nsd/harness: zone files, zones.conf and dnsdist.conf
        (empty when no fault needs dnsdist)."""
        nsd_faults = {f.name: f.answer for f in self.faults.values() if f.by_nsd}
        files = faulted_zone_files(self.records, nsd_faults, ns_address=ns_address, serial=serial,
                                   signer=self.signer)
        files[DNSDIST_CONF] = dnsdist_conf([f for f in self.faults.values() if not f.by_nsd], serial=serial)
        return files

    def domain_addresses(self, domain: str) -> set[str]:
        """Addresses that serve ``domain`` by the current records: its MX hosts' and its own A records."""
        return addresses_serving(self.records, domain)


def addresses_serving(records: Sequence[ResolvedRecord], domain: str) -> set[str]:
    """Addresses that serve ``domain``: its MX hosts' A records and its own (a fallback an MTA might
    wrongly use). Empty for a null MX domain with no A record."""
    name = domain.rstrip(".").lower() + "."
    targets = {name}
    for r in records:
        if r.name == name and r.rtype == "MX":
            target = r.rdata.split()[-1].lower()
            if target != ".":
                targets.add(target if target.endswith(".") else target + ".")
    return {r.rdata for r in records if r.rtype in ("A", "AAAA") and r.name in targets}


def dnsdist_conf(faults: Sequence[DnsFault], *, serial: int = 1) -> str:
    """dnsdist's configuration for ``faults``, or "" when there are none. Rules are tried in order and
    the first that matches answers, so a type's fault comes before a whole name's, and a deeper name
    before its parent. Each faulted query is logged (docker logs of the dns role) with the answer."""
    if not faults:
        return ""
    lines = [
        "-- Generated by mailflow-harness: the dns_fault steps in force that NSD cannot answer itself.",
        'setSecurityPollSuffix("")  -- no query leaves the run\'s network',
        'setACL({"0.0.0.0/0"})',
        'setLocal("0.0.0.0:53")',
        # Health checks off: NSD is on the same host and started first; a failed check would turn
        # every answer into SERVFAIL, a fault nobody asked for.
        f'newServer({{address="{NSD_BEHIND}", checkName="{HARNESS_ZONE}", checkInterval=3600}}):setUp()',
        "local function fault(suffix, qtype, answer, action)",
        "  local names = newSuffixMatchNode()",
        "  names:add(newDNSName(suffix))",
        "  local rule = SuffixMatchNodeRule(names, true)",
        "  if qtype ~= nil then rule = AndRule({rule, QTypeRule(qtype)}) end",
        "  addAction(rule, LuaAction(function(dq)",
        f'    print(string.format("{FAULT_LOG_PREFIX}%s type %d from %s: %s", dq.qname:toString(), dq.qtype,',
        "                        dq.remoteaddr:toStringWithPort(), answer))",
        "    io.stdout:flush()  -- docker logs shows it now, not when a buffer fills",
        "    return DNSAction.None, \"\"",
        "  end))",
        "  addAction(rule, action)",
        "end",
    ]

    def order(f: DnsFault) -> tuple[int, int, str]:
        return (f.rtype is None, -len(dns.name.from_text(f.name).labels), f.name)

    for f in sorted(faults, key=order):
        if not _SAFE_NAME.fullmatch(f.name):
            raise ValueError(f"unsafe DNS name for dnsdist: {f.name!r}")
        qtype = "nil" if f.rtype is None else str(int(dns.rdatatype.from_text(f.rtype)))
        lines.append(f'fault("{f.name}", {qtype}, "{_answer_text(f)}", {_action(f, serial)})')
    return "\n".join(lines) + "\n"


def _answer_text(f: DnsFault) -> str:
    return "no answer (dropped)" if f.answer == "timeout" else f.answer.upper()


def _action(f: DnsFault, serial: int) -> str:
    if f.answer == "timeout":
        return "DropAction()"
    if f.answer == "servfail":
        return "RCodeAction(DNSRCode.SERVFAIL)"
    if f.answer == "nxdomain":
        # An authoritative NXDOMAIN with the zone's SOA (dnsdist 1.7 puts it in the additional section).
        return (f'NegativeAndSOAAction(true, "{zone_origin(f.name)}", {SOA_MINIMUM}, "{NS_HOST}", '
                f'"{HOSTMASTER}", {serial}, 3600, 600, 86400, {SOA_MINIMUM}, {{aa=true}})')
    raise AssertionError(f"no dnsdist action for answer {f.answer!r}")
