"""The scenario's DNS server under dns_fault and dns_change steps, asked directly with dnspython: a
fault for one type leaves the other types answering, a timeout is no answer at all, every faulted
query is logged with its answer, a lifted fault leaves NSD alone again, and a changed record is
served by a reload (the container is not restarted)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from harness.dns.served import ServedDns
from harness.dns.zones import resolve_records
from harness.plan import ScenarioPlan, plan_scenario
from harness.runner import RunContext, SharedTopology
from harness.scenario.model import DnsRecord, Mark

from .conftest import COMPOSE, SCENARIOS, harness

MARK = Mark("t.yaml", 1, 1)


@pytest.fixture(scope="module")
def topology(run_context: RunContext) -> Iterator[tuple[SharedTopology, ScenarioPlan]]:
    plan = plan_scenario(None, COMPOSE, mta="postfix")
    shared = SharedTopology(run_context, plan)
    try:
        yield shared, plan
    finally:
        shared.close(keep=False)


def _ask(server: str, name: str, rtype: str, timeout: float = 2.0) -> dns.message.Message | None:
    try:
        return dns.query.udp(dns.message.make_query(name, rtype), server, timeout=timeout)
    except dns.exception.Timeout:
        return None


def _started_at(shared: SharedTopology) -> str:
    container = shared.topology.hosts["dns"].container.get_wrapped_container()
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


def test_faults_by_type_and_timeouts_then_normal_again(topology: tuple[SharedTopology, ScenarioPlan]) -> None:
    shared, plan = topology
    server = shared.topology.address("dns")
    served = ServedDns(list(plan.records))
    served.fault("example.test.", "MX", "servfail")
    served.fault("origin.test.", None, "timeout")
    served.fault("mx.example.test.", "AAAA", "nxdomain")
    shared.serve_dns(served)

    mx = _ask(server, "example.test", "MX")
    assert mx is not None and mx.rcode() == dns.rcode.SERVFAIL
    a = _ask(server, "mx.example.test", "A")  # same name, another type: NSD's answer, untouched
    assert a is not None and a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA
    assert [r.address for r in a.answer[0]] == [shared.topology.address("mx")]
    aaaa = _ask(server, "mx.example.test", "AAAA")
    assert aaaa is not None and aaaa.rcode() == dns.rcode.NXDOMAIN
    assert _ask(server, "relay.origin.test", "A") is None  # below the name: dropped too
    assert _ask(server, "origin.test", "MX") is None
    sendonly = _ask(server, "sendonly.test", "MX")
    assert sendonly is not None and sendonly.rcode() == dns.rcode.NOERROR

    logs = shared.topology.hosts["dns"].logs(tail=50)
    assert "dns_fault: example.test. type 15" in logs and "SERVFAIL" in logs, logs
    assert "dns_fault: relay.origin.test. type 1" in logs and "no answer (dropped)" in logs, logs

    served.fault("example.test.", None, "normal")
    served.fault("origin.test.", None, "normal")
    served.fault("mx.example.test.", None, "normal")
    shared.serve_dns(served)
    again = _ask(server, "example.test", "MX")
    # NSD alone again: dnsdist sets RA on what it passes on, NSD (authoritative only) never does.
    assert again is not None and again.rcode() == dns.rcode.NOERROR and not again.flags & dns.flags.RA
    assert _ask(server, "origin.test", "MX") is not None


def test_a_changed_record_is_served_by_a_reload(topology: tuple[SharedTopology, ScenarioPlan]) -> None:
    shared, plan = topology
    server = shared.topology.address("dns")
    served = ServedDns(list(plan.records))
    addresses = {role: h.address for role, h in shared.topology.hosts.items()}
    before = _started_at(shared)
    changed = [DnsRecord("example.test", "MX", "20 nomail.sendonly.test.", None, 60, MARK),
               DnsRecord("new.example.test", "A", None, "relay", 60, MARK)]
    served.change(resolve_records(changed, addresses), [("mx.example.test.", "A")])
    shared.serve_dns(served)

    mx = _ask(server, "example.test", "MX")
    assert mx is not None and [r.to_text() for r in mx.answer[0]] == ["20 nomail.sendonly.test."]
    new = _ask(server, "new.example.test", "A")
    assert new is not None and [r.address for r in new.answer[0]] == [addresses["relay"]]
    gone = _ask(server, "mx.example.test", "A")
    assert gone is not None and gone.rcode() == dns.rcode.NXDOMAIN
    assert _started_at(shared) == before  # reloaded, never stopped answering


@pytest.mark.parametrize(("scenario", "edits", "must_fail"), [
    # Without the MX fault the relay delivers at once: "deferred" and "no connection to mx" must fail.
    ("24-dns-mx-servfail-no-fallback-to-a.yaml",
     [("  - dns_fault: {name: example.test, type: MX, answer: servfail}\n", ""),
      ("  - dns_fault: {name: example.test, type: MX, answer: normal}\n", "")], {"queue_state", "no_connection"}),
    # The second change keeping the dead MX: nothing can arrive at mx.
    ("26-mx-changed-mid-scenario-delivered-once.yaml",
     [('value: "10 mx.example.test."', 'value: "10 dead.hosts.test."')], {"delivery", "hop"}),
])
def test_the_dns_scenarios_fail_without_their_dns_steps(engine: object, tmp_path: Path, scenario: str,
                                                         edits: list[tuple[str, str]], must_fail: set[str]) -> None:
    mutated = (SCENARIOS / scenario).read_text()
    for old, new in edits:
        assert mutated.count(old) == 1, old
        mutated = mutated.replace(old, new)
    path = tmp_path / scenario
    path.write_text(mutated)
    out = tmp_path / "r.json"
    done = harness("run", str(path), "--mta", "postfix", "--json", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    failed = {f["kind"] for f in json.loads(out.read_text())["scenarios"][0]["failures"]}
    assert must_fail <= failed, (failed, done.stdout)
