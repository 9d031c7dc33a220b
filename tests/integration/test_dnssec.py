"""The validating resolver of a scenario with dnssec:, asked with dnspython from the host and seen from
inside an MTA container: AD for a signed name, no AD for an unsigned one, SERVFAIL for a bogus zone."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from harness.plan import plan_scenario
from harness.runner import RunContext, bring_up
from harness.scenario.loader import load_scenario
from harness.topology.labels import new_run_id
from harness.topology.topology import RESOLVER_ROLE

from .conftest import COMPOSE

SCENARIO = """\
name: signed, unsigned and bogus zones
description: example.test signed, origin.test bogus, the rest unsigned
dnssec:
  signed: [example.test]
  bogus: [origin.test]
tls:
  mx: {tlsa: valid}
steps:
  - smtp: {host: mx, mail_from: a@nullmx.test, rcpt_to: [bob@example.test]}
"""


def _ask(server: str, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=True)  # RD set: a recursive question
    return dns.query.udp(query, server, timeout=5)


def test_resolver_validates_signed_zones_only(tmp_path: Path, run_context: RunContext) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    plan = plan_scenario(load_scenario(path), COMPOSE, mta="postfix")
    topology = bring_up(run_context, plan, run_id=new_run_id(), keep_label=False)
    try:
        resolver = topology.address(RESOLVER_ROLE)
        signed = _ask(resolver, "mx.example.test.", "A")
        assert signed.rcode() == dns.rcode.NOERROR and signed.flags & dns.flags.AD, signed.to_text()
        tlsa = _ask(resolver, "_25._tcp.mx.example.test.", "TLSA")
        assert tlsa.flags & dns.flags.AD and tlsa.find_rrset(
            tlsa.answer, tlsa.question[0].name, tlsa.question[0].rdclass, dns.rdatatype.TLSA), tlsa.to_text()
        unsigned = _ask(resolver, "nullmx.test.", "MX")
        assert unsigned.rcode() == dns.rcode.NOERROR and not unsigned.flags & dns.flags.AD, unsigned.to_text()
        bogus = _ask(resolver, "relay.origin.test.", "A")
        assert bogus.rcode() == dns.rcode.SERVFAIL, bogus.to_text()
        # Inside an MTA: the resolver itself, not Docker's 127.0.0.11, with glibc keeping the AD bit.
        relay = topology.hosts["relay"].container.get_wrapped_container()
        conf = bytes(relay.exec_run(["cat", "/etc/resolv.conf"]).output).decode()
        assert conf == f"nameserver {resolver}\noptions trust-ad timeout:1 attempts:3\n"
    finally:
        topology.destroy()
