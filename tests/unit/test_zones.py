from __future__ import annotations

import ipaddress
import random
import re
from pathlib import Path

import dns.exception
import dns.name
import dns.rdata
import dns.zone
import pytest

from harness.dns.zones import (
    ROLE_HOSTNAMES,
    ResolvedRecord,
    ZoneFile,
    nsd_zones_conf,
    render_zones,
    resolve_records,
    standard_records,
    zone_origin,
)
from harness.errors import ScenarioError
from harness.plan import plan_scenario
from harness.scenario.model import UNREACHABLE_ROLE, DnsRecord, Mark, Scenario
from harness.topology.topology import plan_addresses, unreachable_address

ADDRESSES = {"dns": "10.77.0.2", "mx": "10.77.0.10", "relay": "10.77.0.11", "nomail": "10.77.0.12"}


def rec(
    name: str, rtype: str, value: str | None = None, *, address_of: str | None = None, line: int = 7
) -> DnsRecord:
    return DnsRecord(name, rtype, value, address_of, 300, Mark("scenario.yaml", line, 5))


def render(*extra: DnsRecord) -> dict[str, dns.zone.Zone]:
    records = resolve_records([*standard_records(ADDRESSES), *extra], ADDRESSES)
    files = render_zones(records, ns_address=ADDRESSES["dns"])
    return {f.origin: dns.zone.from_text(f.text, origin=f.origin, relativize=False) for f in files}


def rdatas(zone: dns.zone.Zone, name: str, rtype: str) -> set[str]:
    rdataset = zone.get_rdataset(dns.name.from_text(name), rtype)
    return set() if rdataset is None else {rd.to_text() for rd in rdataset}


def test_role_hostnames() -> None:
    assert dict(ROLE_HOSTNAMES) == {
        "dns": "ns.harness.test",
        "mx": "mx.example.test",
        "relay": "relay.origin.test",
        "nomail": "nomail.sendonly.test",
    }


def test_standard_records_render_into_expected_zones() -> None:
    zones = render()
    assert sorted(zones) == [
        "example.test.",
        "harness.test.",
        "nullmx.test.",
        "origin.test.",
        "sendonly.test.",
    ]
    assert rdatas(zones["example.test."], "example.test.", "MX") == {"10 mx.example.test."}
    assert rdatas(zones["origin.test."], "origin.test.", "MX") == {"10 relay.origin.test."}
    assert rdatas(zones["sendonly.test."], "sendonly.test.", "MX") == {"10 nomail.sendonly.test."}
    assert rdatas(zones["nullmx.test."], "nullmx.test.", "MX") == {"0 ."}
    null_mx = zones["nullmx.test."].get_rdataset("nullmx.test.", "MX")
    assert null_mx is not None
    (only,) = list(null_mx)
    assert only.preference == 0 and only.exchange == dns.name.root

    assert rdatas(zones["harness.test."], "ns.harness.test.", "A") == {"10.77.0.2"}
    assert rdatas(zones["example.test."], "mx.example.test.", "A") == {"10.77.0.10"}
    assert rdatas(zones["origin.test."], "relay.origin.test.", "A") == {"10.77.0.11"}
    assert rdatas(zones["sendonly.test."], "nomail.sendonly.test.", "A") == {"10.77.0.12"}


def test_every_zone_has_soa_and_ns_at_apex() -> None:
    for origin, zone in render().items():
        soa = zone.get_rdataset(origin, "SOA")
        assert soa is not None and len(soa) == 1
        (s,) = list(soa)
        assert s.mname.to_text() == "ns.harness.test."
        assert s.rname.to_text() == "hostmaster.harness.test."
        assert s.minimum == 60
        assert rdatas(zone, origin, "NS") == {"ns.harness.test."}


def test_harness_zone_exists_without_any_records() -> None:
    (only,) = render_zones([], ns_address="10.1.2.3")
    assert only.origin == "harness.test."
    assert only.filename == "harness.test.zone"
    assert only.text.startswith("$ORIGIN harness.test.")
    zone = dns.zone.from_text(only.text, origin=only.origin, relativize=False)
    assert rdatas(zone, "ns.harness.test.", "A") == {"10.1.2.3"}


def test_scenario_mx_merges_with_standard_rrset_and_duplicates_collapse() -> None:
    zones = render(
        rec("example.test", "MX", "20 relay.origin.test."),
        rec("example.test.", "MX", "10 mx.example.test."),  # same as the standard one
    )
    assert rdatas(zones["example.test."], "example.test.", "MX") == {
        "10 mx.example.test.",
        "20 relay.origin.test.",
    }


def test_relative_names_are_taken_from_root_and_start_new_zones() -> None:
    zones = render(rec("twomx.test", "MX", "10 mx.example.test"), rec("Deep.Sub.TwoMX.test", "TXT", '"hi"'))
    assert rdatas(zones["twomx.test."], "twomx.test.", "MX") == {"10 mx.example.test."}
    assert rdatas(zones["twomx.test."], "deep.sub.twomx.test.", "TXT") == {'"hi"'}
    assert rdatas(zones["twomx.test."], "twomx.test.", "NS") == {"ns.harness.test."}


def test_address_of_is_replaced_by_role_address() -> None:
    (resolved,) = resolve_records([rec("backup.twomx.test", "A", address_of="relay")], ADDRESSES)
    assert resolved == ResolvedRecord(
        "backup.twomx.test.", "A", "10.77.0.11", 300, Mark("scenario.yaml", 7, 5)
    )


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        (rec("x.test", "A", address_of="nosuchrole", line=12), "unknown role 'nosuchrole'"),
        (rec("x.test", "A", "999.1.1.1", line=12), "is not valid A rdata"),
        (rec("x.test", "MX", "ten mx.example.test.", line=12), "is not valid MX rdata"),
        (rec("x.test", "MX", "10 a.test. b.test.", line=12), "expected EOL"),
        (rec("x.test", "BOGUS", "1", line=12), "unknown record type 'BOGUS'"),
        (rec("x.test", "MX", address_of="mx", line=12), "only makes sense for A and AAAA"),
        (rec("x.test", "A", "10.0.0.1", address_of="mx", line=12), "not both"),
        (rec("x.test", "A", line=12), "needs a value or address_of"),
        (rec("x.test", "SOA", "a. b. 1 2 3 4 5", line=12), "generated by the harness"),
        (rec("x.test", "NS", "ns.elsewhere.", line=12), "generated by the harness"),
        (rec("a..test", "A", "10.0.0.1", line=12), "invalid DNS name"),
        (rec("x.*.test", "A", "10.0.0.1", line=12), "names a zone file"),
    ],
)
def test_bad_records_raise_scenario_error_at_their_mark(record: DnsRecord, fragment: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        resolve_records([record], ADDRESSES)
    assert (caught.value.path, caught.value.line, caught.value.col) == ("scenario.yaml", 12, 5)
    assert str(caught.value).startswith("scenario.yaml:12:5: ")
    assert fragment in str(caught.value)


def test_bad_rdata_error_carries_dnspython_message() -> None:
    with pytest.raises(dns.exception.SyntaxError) as dnspython:
        dns.rdata.from_text("IN", "A", "999.1.1.1")
    with pytest.raises(ScenarioError, match=re.escape(str(dnspython.value))):
        resolve_records([rec("x.test", "A", "999.1.1.1")], ADDRESSES)


def test_ns_below_the_apex_is_a_delegation_and_allowed() -> None:
    (resolved,) = resolve_records([rec("sub.twomx.test", "NS", "ns.elsewhere.test.")], ADDRESSES)
    assert resolved.rdata == "ns.elsewhere.test."


@pytest.mark.parametrize(
    ("records", "fragment"),
    [
        (
            [rec("www.example.test", "CNAME", "mx.example.test."), rec("www.example.test", "A", "10.0.0.1")],
            "cannot coexist with A",
        ),
        (
            [rec("www.example.test", "CNAME", "a.test."), rec("www.example.test", "CNAME", "b.test.")],
            "only one CNAME",
        ),
        ([rec("twomx.test", "CNAME", "example.test.")], "zone apex cannot be a CNAME"),
    ],
)
def test_cname_conflicts_are_scenario_errors(records: list[DnsRecord], fragment: str) -> None:
    resolved = resolve_records(records, ADDRESSES)
    with pytest.raises(ScenarioError, match=fragment) as caught:
        render_zones(resolved, ns_address="10.1.2.3")
    assert caught.value.path == "scenario.yaml"


def test_standard_records_need_every_role_address() -> None:
    with pytest.raises(ValueError, match="nomail"):
        standard_records({k: v for k, v in ADDRESSES.items() if k != "nomail"})


def test_standard_records_are_marked_synthetic() -> None:
    records = standard_records(ADDRESSES)
    assert {r.mark for r in records} == {Mark("<standard topology>", 0, 0)}
    assert {r.name for r in records if r.rtype == "MX"} == {
        "example.test.",
        "origin.test.",
        "sendonly.test.",
        "nullmx.test.",
    }
    assert resolve_records(records, ADDRESSES)[0].where == "<standard topology>"


@pytest.mark.parametrize(
    ("name", "origin"),
    [
        ("mx.example.test.", "example.test."),
        ("a.b.c.example.test", "example.test."),
        ("example.test", "example.test."),
        ("test.", "test."),
    ],
)
def test_zone_cut_is_last_two_labels(name: str, origin: str) -> None:
    assert zone_origin(name) == origin


def test_output_is_deterministic_regardless_of_input_order() -> None:
    records = resolve_records(
        [
            *standard_records(ADDRESSES),
            rec("example.test", "MX", "30 c.test."),
            rec("example.test", "MX", "20 b.test."),
            rec("_dmarc.example.test", "TXT", '"v=DMARC1; p=reject"'),
            rec("a.twomx.test", "A", "10.0.0.2"),
            rec("a.twomx.test", "A", "10.0.0.1"),
        ],
        ADDRESSES,
    )
    first = render_zones(records, ns_address="10.77.0.2")
    shuffled = list(records)
    random.Random(4).shuffle(shuffled)
    assert render_zones(shuffled, ns_address="10.77.0.2") == first
    assert [z.origin for z in first] == sorted(z.origin for z in first)


def test_serial_is_configurable() -> None:
    (zone_file,) = render_zones([], ns_address="10.1.2.3", serial=1700000000)
    zone = dns.zone.from_text(zone_file.text, origin=zone_file.origin, relativize=False)
    soa = zone.get_rdataset("harness.test.", "SOA")
    assert soa is not None and next(iter(soa)).serial == 1700000000


def test_nsd_zones_conf() -> None:
    conf = nsd_zones_conf([ZoneFile("example.test.", ""), ZoneFile("harness.test.", "")])
    blocks = conf.split("\n\n")[1:]
    assert blocks == [
        'zone:\n    name: "example.test."\n    zonefile: "/etc/nsd/harness/example.test.zone"',
        'zone:\n    name: "harness.test."\n    zonefile: "/etc/nsd/harness/harness.test.zone"\n',
    ]


# --- address_of: unreachable ---------------------------------------------------------------------

RUN_ADDRESSES = {**ADDRESSES, UNREACHABLE_ROLE: "10.77.0.254"}
# MX fallback past a dead host: the preferred MX has an address nobody answers on.
FALLBACK = (
    rec("fallback.test", "MX", "10 dead.hosts.test."),
    rec("fallback.test", "MX", "20 mx.example.test."),
    rec("dead.hosts.test", "A", address_of="unreachable"),
)


def test_address_of_unreachable_resolves_to_the_runs_unreachable_address() -> None:
    resolved = resolve_records([*standard_records(ADDRESSES), *FALLBACK], RUN_ADDRESSES)
    assert resolved[-1] == ResolvedRecord("dead.hosts.test.", "A", "10.77.0.254", 300, Mark("scenario.yaml", 7, 5))
    files = render_zones(resolved, ns_address=ADDRESSES["dns"])
    zones = {f.origin: dns.zone.from_text(f.text, origin=f.origin, relativize=False) for f in files}
    assert rdatas(zones["fallback.test."], "fallback.test.", "MX") == {"10 dead.hosts.test.", "20 mx.example.test."}
    assert rdatas(zones["hosts.test."], "dead.hosts.test.", "A") == {"10.77.0.254"}
    # No role's name resolves to it: it is only where a scenario points.
    owners = [name.to_text() for z in zones.values() for name, _, rd in z.iterate_rdatas("A")
              if rd.to_text() == "10.77.0.254"]
    assert owners == ["dead.hosts.test."]


def test_address_of_unreachable_without_a_run_network_is_a_located_error() -> None:
    with pytest.raises(ScenarioError, match=r"^scenario.yaml:7:5: dead.hosts.test. A: address_of: unreachable "
                                            r"needs the run's network"):
        resolve_records([FALLBACK[2]], ADDRESSES)


def test_address_of_unreachable_on_aaaa_names_the_address() -> None:
    with pytest.raises(ScenarioError, match=r"the unreachable address '10.77.0.254' is not valid AAAA rdata"):
        resolve_records([rec("dead.hosts.test", "AAAA", address_of="unreachable")], RUN_ADDRESSES)


@pytest.mark.parametrize(
    ("subnet", "used", "expected"),
    [
        ("172.28.5.0/24", {"172.28.5.1", "172.28.5.2", "172.28.5.10"}, "172.28.5.254"),
        ("172.28.5.0/24", {"172.28.5.1", "172.28.5.254", "172.28.5.253"}, "172.28.5.252"),
        ("10.0.0.0/16", {"10.0.0.1"}, "10.0.255.254"),
        ("192.168.7.8/30", {"192.168.7.10"}, "192.168.7.9"),  # usable: .9 and .10
        ("fd00::/126", {"fd00::1"}, "fd00::3"),
    ],
)
def test_unreachable_address_is_the_highest_free_host_address(subnet: str, used: set[str], expected: str) -> None:
    assert unreachable_address(subnet, used) == expected


def test_unreachable_address_needs_a_free_host_address() -> None:
    with pytest.raises(ValueError, match="no free host address"):
        unreachable_address("192.168.7.8/30", {"192.168.7.9", "192.168.7.10"})


def test_zone_setup_points_address_of_unreachable_at_no_container() -> None:
    scenario = Scenario(Path("fallback.yaml"), "fallback", "", FALLBACK, {}, (), Mark("fallback.yaml", 1, 1))
    plan = plan_scenario(scenario, Path("compose"))
    subnet = ipaddress.IPv4Network("172.28.9.0/24")
    addresses = plan_addresses(plan.topology, subnet)
    gateway = "172.28.9.1"
    unreachable = unreachable_address(str(subnet), {gateway, *addresses.values()})
    assert unreachable == "172.28.9.254"
    assert unreachable not in addresses.values()

    setup = plan.zone_setup({**addresses, UNREACHABLE_ROLE: unreachable})
    zone = dns.zone.from_text(setup.files["hosts.test.zone"], origin="hosts.test.", relativize=False)
    assert rdatas(zone, "dead.hosts.test.", "A") == {"172.28.9.254"}
    assert 'name: "hosts.test."' in setup.files["zones.conf"]
    assert plan.domain_addresses("fallback.test") == {unreachable, addresses["mx"]}
