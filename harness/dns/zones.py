"""Zone files for the NSD container: the standard topology's records plus what a scenario declares.

Pure: nothing here does I/O. Zone syntax is produced by dnspython only, so quoting, escaping
and name qualification are dnspython's problem, not ours.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rrset
import dns.zone

from harness.dns.dnssec import ZoneSigner
from harness.errors import ScenarioError
from harness.scenario.model import UNREACHABLE_ROLE, DnsRecord, Mark

# Host names without the trailing dot, because MTA configuration (myhostname, EHLO) wants them that way.
ROLE_HOSTNAMES: Mapping[str, str] = MappingProxyType(
    {
        "dns": "ns.harness.test",
        "mx": "mx.example.test",
        "relay": "relay.origin.test",
        "nomail": "nomail.sendonly.test",
    }
)

NS_HOST = "ns.harness.test."
HOSTMASTER = "hostmaster.harness.test."
HARNESS_ZONE = "harness.test."
STANDARD_MARK = Mark("<standard topology>", 0, 0)
# Short TTLs: every run starts a fresh NSD, and short caching keeps MTAs honest if a zone is reloaded.
DEFAULT_TTL = 60
SOA_REFRESH = 300
SOA_RETRY = 60
SOA_EXPIRE = 3600
SOA_MINIMUM = 60
NSD_ZONE_DIR = "/etc/nsd/harness"

_STANDARD_MX: tuple[tuple[str, str], ...] = (
    ("example.test.", "10 mx.example.test."),
    ("origin.test.", "10 relay.origin.test."),
    # sendonly.test only sends; its MX is the host that answers 521 (RFC 7504).
    ("sendonly.test.", "10 nomail.sendonly.test."),
    ("nullmx.test.", "0 ."),  # RFC 7505 null MX
)

def standard_mx_hosts(domain: str) -> tuple[str, ...]:
    """The host names the standard topology's MX records give ``domain`` (absolute), none for a null MX."""
    hosts = (value.split()[1] for d, value in _STANDARD_MX if d == domain)
    return tuple(h.rstrip(".") for h in hosts if h != ".")


# Names whose zones every run serves (the standard MX domains and role hosts).
STANDARD_ZONE_NAMES: tuple[str, ...] = (*(d for d, _ in _STANDARD_MX), *(f"{h}." for h in ROLE_HOSTNAMES.values()))

# Zone origins become file names and quoted NSD config values; anything beyond these
# characters would need escaping in both, which no mail-flow scenario needs.
_SAFE_LABEL = re.compile(rb"[a-z0-9_-]+")
_IN = dns.rdataclass.IN


@dataclass(frozen=True)
class ResolvedRecord:
    """A record ready for a zone: absolute lower-case owner name, canonical rdata text (absolute names)."""

    name: str
    rtype: str
    rdata: str
    ttl: int
    mark: Mark

    @property
    def where(self) -> str:
        """``file:line:col`` of the declaration, or the synthetic file name for generated records."""
        return str(self.mark) if self.mark.line > 0 else self.mark.file

    def dns_name(self) -> dns.name.Name:
        return dns.name.from_text(self.name, origin=dns.name.root)

    def dns_rdtype(self) -> dns.rdatatype.RdataType:
        return dns.rdatatype.from_text(self.rtype)

    def to_rdata(self) -> dns.rdata.Rdata:
        return dns.rdata.from_text(_IN, self.dns_rdtype(), self.rdata, origin=dns.name.root, relativize=False)

    def __str__(self) -> str:
        return f"{self.name} {self.ttl} IN {self.rtype} {self.rdata}"


@dataclass(frozen=True)
class ZoneFile:
    origin: str
    text: str

    @property
    def filename(self) -> str:
        return f"{self.origin.rstrip('.')}.zone"


def zone_origin(name: str) -> str:
    """The zone a name lives in under the harness's zone cut rule: its last two labels."""
    return _zone_of(dns.name.from_text(name, origin=dns.name.root).canonicalize()).to_text()


def standard_records(addresses: Mapping[str, str]) -> list[DnsRecord]:
    """The standard topology's records; ``addresses`` maps every role in ROLE_HOSTNAMES to its address."""
    missing = sorted(set(ROLE_HOSTNAMES) - set(addresses))
    if missing:
        raise ValueError(f"no container address for role(s) {', '.join(missing)}")
    records = [
        DnsRecord(domain, "MX", value, None, DEFAULT_TTL, STANDARD_MARK) for domain, value in _STANDARD_MX
    ]
    for role, host in sorted(ROLE_HOSTNAMES.items()):
        records.append(
            DnsRecord(f"{host}.", _address_rtype(addresses[role]), None, role, DEFAULT_TTL, STANDARD_MARK)
        )
    return records


def resolve_records(records: Iterable[DnsRecord], addresses: Mapping[str, str]) -> list[ResolvedRecord]:
    """Replace ``address_of`` by the role's address and validate every record with dnspython.

    ``addresses`` maps role -> address; under UNREACHABLE_ROLE (``unreachable``) it holds the run's
    address that no container answers on, which ``address_of: unreachable`` resolves to.

    Raises ScenarioError at the offending record's mark.
    """
    return [_resolve(record, addresses) for record in records]


def render_zones(records: Sequence[ResolvedRecord], *, ns_address: str, serial: int = 1,
                 signer: ZoneSigner | None = None) -> list[ZoneFile]:
    """One zone file per zone origin, sorted by origin, each with SOA and NS generated here.

    Records with the same owner and type merge into one rrset (duplicates collapse; the rrset
    takes the smallest TTL). ``serial`` defaults to 1 so output is reproducible; pass a
    time-based one only when reloading zones into a running server. A zone ``signer`` signs
    (harness.dns.dnssec) is rendered with its DNSKEY, RRSIG and NSEC records.
    """
    ns_record = ResolvedRecord(NS_HOST, _address_rtype(ns_address), ns_address, DEFAULT_TTL, STANDARD_MARK)
    rrsets: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
    declared: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], list[ResolvedRecord]] = {}
    for record in [*records, ns_record]:
        name = record.dns_name().canonicalize()
        rdtype = record.dns_rdtype()
        problem = _placement_problem(name, rdtype)
        if problem:
            raise _error_at(record.mark, f"{record.name} {record.rtype}: {problem}")
        key = (name, rdtype)
        if key not in rrsets:
            rrsets[key] = dns.rrset.RRset(name, _IN, rdtype)
            declared[key] = []
        rrsets[key].add(record.to_rdata(), record.ttl)
        declared[key].append(record)
    _check_cnames(declared)

    by_zone: dict[dns.name.Name, list[dns.rrset.RRset]] = {}
    for (name, _), rrset in rrsets.items():
        by_zone.setdefault(_zone_of(name), []).append(rrset)
    return [_render_zone(origin, by_zone[origin], serial, signer) for origin in sorted(by_zone)]


def nsd_zones_conf(zones: Iterable[ZoneFile]) -> str:
    """NSD ``zone:`` blocks for the files, as the dns image includes them from /etc/nsd/harness/zones.conf."""
    lines = ["# Generated by mailflow-harness; one block per rendered zone file."]
    for zone in zones:
        lines += [
            "",
            "zone:",
            f'    name: "{zone.origin}"',
            f'    zonefile: "{NSD_ZONE_DIR}/{zone.filename}"',
        ]
    return "\n".join(lines) + "\n"


def _resolve(record: DnsRecord, addresses: Mapping[str, str]) -> ResolvedRecord:
    mark = record.mark
    try:
        name = dns.name.from_text(record.name, origin=dns.name.root).canonicalize()
    except dns.exception.DNSException as e:
        raise _error_at(mark, f"invalid DNS name {record.name!r}: {e}") from e
    try:
        rdtype = dns.rdatatype.from_text(record.rtype)
    except dns.exception.DNSException as e:
        raise _error_at(mark, f"{record.name}: unknown record type {record.rtype!r}") from e
    rtype = dns.rdatatype.to_text(rdtype)
    if dns.rdatatype.is_metatype(rdtype):
        raise _error_at(mark, f"{record.name}: {rtype} is a query type, not a record type")
    problem = _placement_problem(name, rdtype)
    if problem:
        raise _error_at(mark, f"{name} {rtype}: {problem}")
    if not 0 <= record.ttl <= 2**31 - 1:
        raise _error_at(mark, f"{name} {rtype}: TTL {record.ttl} is outside 0..2147483647")

    if record.address_of is not None:
        if record.value is not None:
            raise _error_at(mark, f"{name} {rtype}: give either a value or address_of, not both")
        if rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
            raise _error_at(mark, f"{name} {rtype}: address_of only makes sense for A and AAAA records")
        if record.address_of not in addresses:
            if record.address_of == UNREACHABLE_ROLE:
                raise _error_at(mark, f"{name} {rtype}: address_of: {UNREACHABLE_ROLE} needs the run's network, "
                                      "and none was given")
            known = ", ".join(sorted(addresses))
            raise _error_at(mark, f"{name} {rtype}: unknown role {record.address_of!r} (known: {known})")
        text = addresses[record.address_of]
        if record.address_of == UNREACHABLE_ROLE:
            what = f"the unreachable address {text!r}"
        else:
            what = f"address {text!r} of role {record.address_of!r}"
    elif record.value is not None:
        text = record.value
        what = f"value {text!r}"
    else:
        raise _error_at(mark, f"{name} {rtype}: needs a value or address_of")

    try:
        rdata = dns.rdata.from_text(_IN, rdtype, text, origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError) as e:
        raise _error_at(mark, f"{name} {rtype}: {what} is not valid {rtype} rdata: {e}") from e
    return ResolvedRecord(name.to_text(), rtype, rdata.to_text(), record.ttl, mark)


def _placement_problem(name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> str | None:
    """Why the record cannot go where the zone cut rule puts it, or None."""
    if name == dns.name.root:
        return "records at the root are not supported"
    origin = _zone_of(name)
    if not all(_SAFE_LABEL.fullmatch(label) for label in origin.labels[:-1]):
        return (
            f"its zone {origin} (the last two labels) must consist of letters, digits, '-' and '_' "
            "because it names a zone file"
        )
    if rdtype == dns.rdatatype.SOA:
        return "SOA records are generated by the harness"
    if rdtype == dns.rdatatype.NS and name == origin:
        # The preflight compares whole rrsets, so a declared apex NS would never match the generated one.
        return f"NS at the zone apex {origin} is generated by the harness"
    return None


def _check_cnames(
    declared: Mapping[tuple[dns.name.Name, dns.rdatatype.RdataType], list[ResolvedRecord]],
) -> None:
    # dnspython silently drops data that conflicts with a CNAME, which would hide the mistake until preflight.
    types_at: dict[dns.name.Name, list[dns.rdatatype.RdataType]] = {}
    for name, rdtype in declared:
        types_at.setdefault(name, []).append(rdtype)
    for name, types in types_at.items():
        if dns.rdatatype.CNAME not in types:
            continue
        key = (name, dns.rdatatype.CNAME)
        mark = _blame([r.mark for r in declared[key]])
        # Counted from the declarations: an rrset silently keeps only the last CNAME.
        if len({r.to_rdata() for r in declared[key]}) > 1:
            raise _error_at(mark, f"{name} CNAME: a name can have only one CNAME record")
        if name == _zone_of(name):
            raise _error_at(mark, f"{name} CNAME: a zone apex cannot be a CNAME (it holds SOA and NS)")
        others = sorted(dns.rdatatype.to_text(t) for t in types if t != dns.rdatatype.CNAME)
        if others:
            raise _error_at(mark, f"{name} CNAME: a CNAME cannot coexist with {', '.join(others)} records")


def _render_zone(origin: dns.name.Name, rrsets: list[dns.rrset.RRset], serial: int,
                 signer: ZoneSigner | None = None) -> ZoneFile:
    # Absolute owner names throughout: to_text then prints no '@' or relative names to puzzle over.
    zone = dns.zone.Zone(origin, rdclass=_IN, relativize=False)
    ns_host = dns.name.from_text(NS_HOST)
    # dnspython's rdata constructors are unannotated; they take typed fields, so no rdata text is assembled.
    soa = dns.rdtypes.ANY.SOA.SOA(  # type: ignore[no-untyped-call]
        _IN,
        dns.rdatatype.SOA,
        ns_host,
        dns.name.from_text(HOSTMASTER),
        serial,
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        SOA_MINIMUM,
    )
    ns = dns.rdtypes.ANY.NS.NS(_IN, dns.rdatatype.NS, ns_host)  # type: ignore[no-untyped-call]
    with zone.writer() as txn:
        txn.add(origin, DEFAULT_TTL, soa)
        txn.add(origin, DEFAULT_TTL, ns)
        for rrset in sorted(rrsets, key=lambda r: (r.name, r.rdtype)):
            # Rdatasets keep insertion order in to_text; sorting makes the file reproducible.
            txn.add(dns.rrset.from_rdata_list(rrset.name, rrset.ttl, sorted(rrset)))
        if signer is not None:
            signer.sign(zone, txn)
    zone.check_origin()
    text = zone.to_text(sorted=True, relativize=False, want_origin=True)
    return ZoneFile(origin.to_text(), text)


def _zone_of(name: dns.name.Name) -> dns.name.Name:
    # Three labels: two plus the root label.
    return name if len(name.labels) <= 3 else name.split(3)[1]


def _address_rtype(address: str) -> str:
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


def _blame(marks: Sequence[Mark]) -> Mark:
    """The mark worth pointing at: the first one in a scenario file, else the first at all."""
    return next((m for m in marks if m.line > 0), marks[0])


def _error_at(mark: Mark, message: str) -> ScenarioError:
    return ScenarioError(mark.file, mark.line, mark.col, message)


# What a dns_fault step makes the scenario's DNS server answer for a name (and every name below it).
DNS_FAULT_ANSWERS = ("servfail", "nxdomain", "normal")


def faulted_zone_files(records: Sequence[ResolvedRecord], faults: Mapping[str, str], *,
                       ns_address: str, serial: int = 1, signer: ZoneSigner | None = None) -> dict[str, str]:
    """The dns container's files (zone files and zones.conf) for ``records`` with ``faults`` (name ->
    servfail or nxdomain) in force, using NSD's own behaviour, no proxy:

    - servfail: a zone at the name whose file does not exist. NSD answers SERVFAIL for a zone it
      could not load, for the name and every name below it, whatever the type.
    - nxdomain: the name's records and those below it are left out. A name that was a zone's apex
      leaves no zone at all, so the zone above it (``test.``) is served with only SOA and NS, and NSD
      answers NXDOMAIN from it (authoritatively, with that SOA).
    """
    def at_or_below(name: dns.name.Name, top: dns.name.Name) -> bool:
        return name == top or name.is_subdomain(top)

    faulted = {dns.name.from_text(n, origin=dns.name.root).canonicalize(): a for n, a in faults.items()
               if a != "normal"}
    gone = [n for n, a in faulted.items() if a == "nxdomain"]
    kept = [r for r in records if not any(at_or_below(r.dns_name().canonicalize(), n) for n in gone)]
    zones = render_zones(kept, ns_address=ns_address, serial=serial, signer=signer)
    broken = sorted(n for n, a in faulted.items() if a == "servfail")
    zones = [z for z in zones
             if not any(at_or_below(dns.name.from_text(z.origin), n) for n in broken)]
    origins = {dns.name.from_text(z.origin) for z in zones}
    parents = sorted({n.parent() for n in gone if n.parent() != dns.name.root and not any(
        at_or_below(n, o) for o in origins)})
    zones += [_render_zone(p, [], serial, signer) for p in parents if p not in origins]
    files = {z.filename: z.text for z in zones}
    conf = nsd_zones_conf(sorted(zones, key=lambda z: z.origin))
    for name in broken:
        conf += ("\nzone:\n"
                 f'    name: "{name.to_text()}"\n'
                 f'    zonefile: "{NSD_ZONE_DIR}/servfail/{name.to_text().rstrip(".")}.zone"\n')
    files["zones.conf"] = conf
    return files
