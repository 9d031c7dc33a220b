"""What a reload cannot serve (a zone added or removed, dnsdist's rules for a dns_fault step) is served
by new server processes in the same dns container (compose/dns/dns-restart): the container is not
restarted, no answer comes from the old servers once the change returns, and files the checker
refuses are reported at once with its words while the old servers go on answering."""

from __future__ import annotations

import time

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

from harness.dns.served import ServedDns
from harness.errors import InfrastructureError
from harness.expect.results import PASSED
from harness.observe.queue import HostCommands
from harness.runner import RunContext
from harness.topology.topology import DNS_ROLE

from .conftest import scenario_ran

DOMAIN = "example.test."


def _mx(server: str, timeout: float = 1.0) -> list[str]:
    reply = dns.query.udp(dns.message.make_query(DOMAIN, "MX"), server, timeout=timeout)
    return [rdata.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.MX for rdata in rrset]


def _started(host_container: object) -> tuple[str, int]:
    container = host_container.get_wrapped_container()  # type: ignore[attr-defined]
    container.reload()
    return container.attrs["State"]["StartedAt"], container.attrs["RestartCount"]


def test_new_servers_in_the_same_container_and_never_an_answer_from_the_old_ones(run_context: RunContext) -> None:
    with scenario_ran(run_context, "01-direct-354.yaml") as (first, shared, plan):
        server = shared.topology.address(DNS_ROLE)
        dns_host = shared.topology.hosts[DNS_ROLE]
        before = _started(dns_host.container)
        standard = _mx(server)
        assert standard, "the standard zone has an MX record for example.test"

        served = ServedDns(list(plan.records))
        served.fault(DOMAIN, "MX", "timeout")  # one type, no answer: dnsdist in front of NSD
        shared.serve_dns(served)
        # The very first query after the change: the old NSD alone would have answered it.
        with pytest.raises(dns.exception.Timeout):
            _mx(server)
        a_reply = dns.query.udp(dns.message.make_query(DOMAIN, "SOA"), server, timeout=1.0)
        assert a_reply.answer, "the other types still pass through dnsdist to NSD"

        served.fault(DOMAIN, "MX", "normal")
        shared.serve_dns(served)
        lifted = _mx(server)

        # From inside the container, asked the moment dns-restart returns: no answer from the NSD that
        # served before (the new dnsdist drops the query, or is not listening yet).
        served.fault(DOMAIN, "MX", "timeout")
        files = served.files(ns_address=server)
        dns_host.put_files("/etc/nsd/harness", {name: text.encode() for name, text in files.items()})
        at_once = HostCommands(dns_host)(["sh", "-c", "dns-restart && dig +short +tries=1 +time=1 @127.0.0.1 "
                                          f"{DOMAIN} MX; true"])
        shared.served = files  # what the container serves now: lifted again below
        served.fault(DOMAIN, "MX", "normal")
        shared.serve_dns(served)

        # A zone the checker refuses: reported with its words, the servers running untouched.
        broken = dict(shared.served)
        broken["zones.conf"] += 'zone:\n    name: "broken.test"\n    zonefile: "/etc/nsd/harness/broken.test.zone"\n'
        broken["broken.test.zone"] = "this is not a zone file\n"
        with pytest.raises(InfrastructureError) as refused:
            shared._restart_dns(broken)
        still = _mx(server)
        after = _started(dns_host.container)
    assert first.status == PASSED, (first.error, first.failures)
    assert lifted == standard
    assert not any(line.split()[-1:] == [standard[0].split()[-1]] for line in at_once.splitlines()), at_once
    assert "dns-restart" in str(refused.value) and "broken.test" in str(refused.value), str(refused.value)
    assert still == standard
    assert after == before, "the dns container itself was restarted"


def _mtimes(dns_host: object) -> dict[str, str]:
    done = HostCommands(dns_host)(["sh", "-c", "cd /etc/nsd/harness && stat -c '%n %.9Y' *"])  # type: ignore[arg-type]
    return dict(line.split() for line in done.splitlines())


def test_a_reload_writes_and_checks_only_the_changed_zone_and_a_refused_one_is_written_again(
        run_context: RunContext) -> None:
    """Only the zone files that changed are written, checked and reread (the others keep their mtime, so
    NSD does not reload them); a zone file dns-check refuses is reported and the old data served; the
    next change writes every file again, so nothing the refused change left is ever served."""
    with scenario_ran(run_context, "01-direct-354.yaml") as (first, shared, _):
        server = shared.topology.address(DNS_ROLE)
        dns_host = shared.topology.hosts[DNS_ROLE]
        standard = _mx(server)
        before = _mtimes(dns_host)

        moved = dict(shared.served)
        moved["example.test.zone"] = moved["example.test.zone"].replace("MX 10 ", "MX 20 ")
        assert moved["example.test.zone"] != shared.served["example.test.zone"]
        shared._reload_dns(moved)
        after_move = _mtimes(dns_host)
        deadline = time.monotonic() + 5  # NSD reloads in the background
        while (changed_mx := _mx(server)) == standard and time.monotonic() < deadline:
            time.sleep(0.05)

        broken = dict(shared.served)
        broken["example.test.zone"] += "this is not a record\n"
        with pytest.raises(InfrastructureError) as refused:
            shared._reload_dns(broken)
        still = _mx(server)
        forgotten = dict(shared.served)

        shared._reload_dns(moved)  # the same files as before the refused change
        repaired = _mtimes(dns_host)
        final_mx = _mx(server)
    assert first.status == PASSED, (first.error, first.failures)
    assert [r.replace("10 ", "20 ", 1) for r in standard] == changed_mx, (standard, changed_mx)
    assert after_move["example.test.zone"] != before["example.test.zone"]
    untouched = {n for n in before if n != "example.test.zone"}
    assert untouched and all(after_move[n] == before[n] for n in untouched), (before, after_move)
    assert "example.test" in str(refused.value), str(refused.value)
    assert still == changed_mx, "a refused zone file is never served"
    assert forgotten == {}, "after a refused change the harness no longer knows what the container holds"
    assert all(repaired[n] != after_move[n] for n in after_move), "every file written again after it"
    assert final_mx == changed_mx
