from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import dns.zone
import pytest

from harness.dns.preflight import check_records, wait_until_answering
from harness.dns.zones import ResolvedRecord, render_zones, resolve_records, standard_records
from harness.errors import DnsPreflightError, ReadinessTimeoutError
from harness.scenario.model import DnsRecord, Mark

ADDRESSES = {"dns": "10.77.0.2", "mx": "10.77.0.10", "relay": "10.77.0.11", "nomail": "10.77.0.12"}


class FakeAuthoritative:
    """A minimal authoritative UDP server answering from dnspython zones, like NSD would."""

    def __init__(self, zones: Sequence[dns.zone.Zone]) -> None:
        self.zones = {zone.origin: zone for zone in zones if zone.origin is not None}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeAuthoritative:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.sock.sendto(self.answer(dns.message.from_wire(wire)).to_wire(), peer)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        origins = [o for o in self.zones if question.name.is_subdomain(o)]
        if not origins:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        zone = self.zones[max(origins, key=lambda o: len(o.labels))]
        response.flags |= dns.flags.AA
        node = zone.get_node(question.name)
        rdataset = None if node is None else node.get_rdataset(question.rdclass, question.rdtype)
        if rdataset is not None:
            rrset = dns.rrset.RRset(question.name, question.rdclass, question.rdtype)
            for rdata in rdataset:
                rrset.add(rdata, rdataset.ttl)
            response.answer.append(rrset)
        elif node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response


def rec(name: str, rtype: str, value: str | None = None, *, address_of: str | None = None) -> DnsRecord:
    return DnsRecord(name, rtype, value, address_of, 300, Mark("scenario.yaml", 9, 3))


def resolved(*extra: DnsRecord) -> list[ResolvedRecord]:
    return resolve_records([*standard_records(ADDRESSES), *extra], ADDRESSES)


def serving(records: Sequence[ResolvedRecord]) -> FakeAuthoritative:
    files = render_zones(records, ns_address=ADDRESSES["dns"])
    return FakeAuthoritative([dns.zone.from_text(f.text, origin=f.origin, relativize=False) for f in files])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A bound UDP port nobody answers on, so queries time out instead of racing another process."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_all_records_pass() -> None:
    records = resolved(
        rec("twomx.test", "MX", "10 mx.example.test."),
        rec("twomx.test", "MX", "20 relay.origin.test."),
        rec("example.test", "MX", "20 relay.origin.test."),
        rec("backup.twomx.test", "A", address_of="relay"),
        rec("_dmarc.example.test", "TXT", '"v=DMARC1; p=reject"'),
    )
    with serving(records) as server:
        check_records("127.0.0.1", records, port=server.port, timeout_s=1.0)
        wait_until_answering("127.0.0.1", "example.test", port=server.port, timeout_s=1.0)


def test_missing_record_names_the_declaration() -> None:
    served = resolved()
    extra = resolved(rec("www.example.test", "A", "10.0.0.5"))[-1:]
    with serving(served) as server, pytest.raises(DnsPreflightError) as caught:
        check_records("127.0.0.1", [*served, *extra], port=server.port, timeout_s=1.0)
    message = str(caught.value)
    assert "scenario.yaml:9:3: www.example.test. A" in message
    assert "declared {10.0.0.5}" in message
    assert "NXDOMAIN" in message


def test_record_in_unserved_zone_reports_refused() -> None:
    served = resolved()
    extra = resolved(rec("twomx.test", "MX", "10 mx.example.test."))[-1:]
    with serving(served) as server, pytest.raises(DnsPreflightError, match=r"twomx\.test\. MX.*REFUSED"):
        check_records("127.0.0.1", [*served, *extra], port=server.port, timeout_s=1.0)


def test_wrong_rdata_shows_declared_and_answered() -> None:
    on_server = resolved(rec("backup.twomx.test", "A", "10.0.0.1"))
    declared = resolved(rec("backup.twomx.test", "A", "10.0.0.99"))
    with serving(on_server) as server, pytest.raises(DnsPreflightError) as caught:
        check_records("127.0.0.1", declared, port=server.port, timeout_s=1.0)
    message = str(caught.value)
    assert (
        "scenario.yaml:9:3: backup.twomx.test. A: declared {10.0.0.99}; server answered {10.0.0.1}" in message
    )
    assert "1 declared rrset(s)" in message  # the standard records still matched


def test_merged_rrset_missing_one_member_blames_that_declaration() -> None:
    on_server = resolved()
    declared = resolved(rec("example.test", "MX", "20 relay.origin.test."))
    with serving(on_server) as server, pytest.raises(DnsPreflightError) as caught:
        check_records("127.0.0.1", declared, port=server.port, timeout_s=1.0)
    message = str(caught.value)
    assert "scenario.yaml:9:3: example.test. MX" in message
    assert "declared {10 mx.example.test., 20 relay.origin.test.}" in message
    assert "missing {20 relay.origin.test.}" in message


def test_comparison_is_by_rdata_not_text() -> None:
    on_server = resolved(rec("twomx.test", "MX", "10 MX.Example.Test."))
    declared = resolved(rec("twomx.test", "MX", "10 mx.example.test."))
    with serving(on_server) as server:
        check_records("127.0.0.1", declared, port=server.port, timeout_s=1.0)


def test_nodata_is_reported() -> None:
    declared = resolved(rec("example.test", "TXT", '"v=spf1 -all"'))
    with serving(declared[:-1]) as server, pytest.raises(DnsPreflightError, match="no TXT records"):
        check_records("127.0.0.1", declared, port=server.port, timeout_s=1.0)


def test_no_server_times_out_within_bound(silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(DnsPreflightError) as caught:
        check_records("127.0.0.1", resolved(), port=silent_port, timeout_s=0.3)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0  # stops at the first unanswered query instead of timing out on each
    assert f"127.0.0.1:{silent_port} did not answer example.test. MX within 0.3 s" in str(caught.value)
    assert "<standard topology>" in str(caught.value)


def test_wait_until_answering_gives_up_within_bound(silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(ReadinessTimeoutError) as caught:
        wait_until_answering("127.0.0.1", "example.test.", port=silent_port, timeout_s=0.3)
    assert time.monotonic() - started < 0.8
    assert str(caught.value) == (
        f"dns at 127.0.0.1:{silent_port} did not answer SOA example.test. within 0.3 s (last: no reply)"
    )
    assert isinstance(caught.value, TimeoutError)


def test_wait_until_answering_reports_last_rcode() -> None:
    with (
        serving(resolved()) as server,
        pytest.raises(ReadinessTimeoutError, match=r"last: server answered REFUSED"),
    ):
        wait_until_answering("127.0.0.1", "twomx.test", port=server.port, timeout_s=0.3)
