"""A shared topology changed between two scenarios by replacing just the roles whose configuration
the next scenario changes (``SharedTopology._replace``), or by reconfiguring a role in its own
container when only its TLS changes (``SharedTopology._reconfigure``): the changed role runs as the
scenario says, the unchanged ones keep their containers, and the scenario after it finds the standard
role again."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import dns.message
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from harness.dns.served import ServedDns
from harness.expect.results import CONFIG_ERROR, PASSED, ScenarioResult
from harness.runner import RunContext, ScenarioSequence, SharedTopology
from harness.scenario.loader import load_scenario
from harness.scenario.model import POLICY_ROLE, RESOLVER_ROLE, RoleTls, Scenario
from harness.topology.labels import ROLE_LABEL, RUN_LABEL
from harness.topology.topology import CONFIG_AGE_S, reconfigure_role

from .conftest import SCENARIOS, scenario_ran

T = TypeVar("T")

PLAIN = """\
name: the standard roles
description: mx takes mail in clear; the relay's hop to mx is seen by mx's capture
steps:
  - smtp: {host: mx, mail_from: alice@origin.test, rcpt_to: bob@example.test, expect: {mail: 250, data: 354}}
  - smtp: {host: relay, mail_from: alice@origin.test, rcpt_to: carol@example.test}
  - delivery: {host: mx, mailbox: carol@example.test, within: 15, copies: 1}
  - hop: {hop: relay->mx, expect: {data: 354, end_of_data: 250}}
"""

# Every implementation refuses MAIL in clear with 530 when it requires STARTTLS (scenario 23).
MX_REQUIRES_TLS = """\
name: mx requires STARTTLS
description: only mx changes; MAIL in clear is refused
tls:
  mx: {certificate: valid, require: true}
steps:
  - smtp:
      host: mx
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
      expect: {ehlo: {code: 250, text: STARTTLS}, mail: 530}
"""

# Settings can say anything (a listening address, a queue directory): the role gets a new container.
MX_SETTINGS = """\
name: mx with a setting of its own
description: only mx changes; it takes mail as before
roles:
  mx:
    settings:
      postfix: {message_size_limit: "20480000"}
      exim: {RETRY_INTERVAL: 20s}
steps:
  - smtp: {host: mx, mail_from: alice@origin.test, rcpt_to: bob@example.test, expect: {mail: 250, data: 354}}
"""

# Postfix refuses to start with a queue directory that does not exist (test_start_failure.py).
RELAY_REFUSED = """\
name: a relay configuration Postfix refuses
description: the replaced relay never greets
roles:
  relay:
    settings:
      postfix: {queue_directory: /nonexistent}
steps:
  - smtp: {host: mx, mail_from: alice@origin.test, rcpt_to: bob@example.test}
"""


@pytest.mark.parametrize("mta", ["postfix", "exim"])
def test_a_role_the_next_scenario_changes_is_replaced_and_the_others_are_kept(
        run_context: RunContext, tmp_path: Path, mta: str) -> None:
    plain = load_scenario(_write(tmp_path, "plain.yaml", PLAIN))
    changed = load_scenario(_write(tmp_path, "settings.yaml", MX_SETTINGS))
    results, seen = _in_turn(run_context, (plain, changed, plain), mta, lambda shared: (
        _containers(shared), {role: watch.alive for role, watch in shared.mail_watches.items()},
        sorted(shared.captures)))
    containers = [c for c, _, _ in seen]
    _, watching, captured = seen[-1]
    assert [r.status for r in results] == [PASSED] * 3, [(r.name, r.error, r.failures) for r in results]
    # One topology throughout: a new one per configuration would pass too, and is what this avoids.
    assert len({r.run_id for r in results}) == 1, [r.run_id for r in results]
    # mx replaced twice (its setting, then the standard mx again); nothing else touched.
    assert len({c["mx"] for c in containers}) == 3, containers
    for role in ("dns", "relay", "nomail"):
        assert len({c[role] for c in containers}) == 1, (role, containers)
    # The new mx has a capture (the last scenario's hop was read from it) and a mail watch.
    assert watching == {"mx": True, "relay": True, "nomail": True}, watching
    assert captured == ["mx", "nomail", "relay"], captured


@pytest.mark.parametrize("mta", ["postfix", "exim", "opensmtpd"])
def test_a_role_whose_tls_alone_changes_is_reconfigured_in_its_own_container(
        run_context: RunContext, tmp_path: Path, mta: str) -> None:
    """plain, mx requiring STARTTLS, plain: mx keeps its container, and each scenario sees what it asks
    for (the second one fails if mx still takes MAIL in clear, the third if it still refuses it)."""
    plain = load_scenario(_write(tmp_path, "plain.yaml", PLAIN))
    tls = load_scenario(_write(tmp_path, "tls.yaml", MX_REQUIRES_TLS))

    def look(shared: SharedTopology) -> tuple[dict[str, str], bytes | None, dict[str, bool]]:
        issued = shared.topology.credentials.get("mx")
        return (_containers(shared), issued.cert_pem if issued is not None else None,
                {role: watch.alive for role, watch in shared.mail_watches.items()})

    results, seen = _in_turn(run_context, (plain, tls, plain), mta, look)
    containers = [c for c, _, _ in seen]
    credentials = [cert for _, cert, _ in seen]
    watching = seen[-1][2]
    assert [r.status for r in results] == [PASSED] * 3, [(r.name, r.error, r.failures) for r in results]
    assert len({r.run_id for r in results}) == 1, [r.run_id for r in results]
    for role in ("dns", "mx", "relay", "nomail"):
        assert len({c[role] for c in containers}) == 1, (role, containers)
    # A certificate of its own while it offers TLS, none after.
    assert credentials[0] is None and credentials[1] is not None and credentials[2] is None, credentials
    assert watching == {"mx": True, "relay": True, "nomail": True}, watching


@pytest.mark.parametrize("mta", ["postfix", "exim", "opensmtpd"])
def test_no_process_of_the_old_configuration_answers_after_a_reconfiguration(
        run_context: RunContext, tmp_path: Path, mta: str) -> None:
    """A session just before the change leaves an smtpd of the old configuration idle (Postfix keeps one
    100 s for the next connection): after ``reconfigure_role`` the next session is answered with the new
    one (STARTTLS offered, MAIL in clear refused), whichever process takes it."""
    sequence = ScenarioSequence(run_context)
    try:
        first = sequence.run(load_scenario(_write(tmp_path, "plain.yaml", PLAIN)), mta)
        shared = sequence.shared
        assert shared is not None
        mx = shared.topology.hosts["mx"]
        before = _session(mx.address)
        old = shared.roles["mx"]
        reconfigure_role(shared.topology, old, replace(old, tls=RoleTls("mx", "valid", require=True)))
        after = _session(mx.address)
        # Its rewritten main file is not "hot": Postfix would read a main.cf changed within the last
        # second again, 300 ms apart, until it cooled down (CONFIG_AGE_S).
        assert old.mta is not None
        written = mx.shell.run(["stat", "-c", "%Y", old.mta.config_target.rstrip("/") + "/" + old.mta.main_file])
        checked_at = time.time()
    finally:
        sequence.close()
    assert written.exit_code == 0 and int(written.stdout) <= checked_at - CONFIG_AGE_S + 2, (written, checked_at)
    assert first.status == PASSED, (first.error, first.failures)
    assert "STARTTLS" not in before[0] and before[1].startswith("250"), before
    assert "STARTTLS" in after[0] and after[1].startswith("530"), after


def _session(address: str) -> tuple[str, str]:
    """The EHLO reply and the reply to MAIL of one session in clear with ``address``."""
    with socket.create_connection((address, 25), timeout=10) as sock:
        replies = sock.makefile("rb")

        def reply() -> str:
            lines = [replies.readline().decode()]
            while lines[-1][3:4] == "-":
                lines.append(replies.readline().decode())
            return "".join(lines)

        reply()
        sock.sendall(b"EHLO client.test\r\n")
        ehlo = reply()
        sock.sendall(b"MAIL FROM:<alice@origin.test>\r\n")
        mail = reply()
        sock.sendall(b"QUIT\r\n")
        reply()
    return ehlo, mail


def test_a_certificate_changed_in_place_is_the_one_the_next_scenario_sees(
        run_context: RunContext) -> None:
    """29 (mx's certificate expired: deferred) then 30 (valid: delivered, verified) on one Postfix topology:
    mx keeps its container and serves each scenario's certificate (30 fails on the expired one, 29 passes
    only on it)."""
    expired, valid = (load_scenario(SCENARIOS / name) for name in (
        "29-relay-verify-expired-certificate-deferred.yaml", "30-relay-verify-valid-certificate-delivered.yaml"))
    results, containers = _in_turn(run_context, (expired, valid, expired), "postfix",
                                   lambda shared: shared.topology.hosts["mx"].container_id)
    assert [r.status for r in results] == [PASSED] * 3, [(r.name, r.error, r.failures) for r in results]
    assert len({r.run_id for r in results}) == 1, [r.run_id for r in results]
    assert len(set(containers)) == 1, containers


def test_a_replacement_the_mta_refuses_is_reported_and_replaced_by_the_next_scenario(
        run_context: RunContext, tmp_path: Path) -> None:
    plain = load_scenario(_write(tmp_path, "plain.yaml", PLAIN))
    refused = load_scenario(_write(tmp_path, "refused.yaml", RELAY_REFUSED))
    sequence = ScenarioSequence(run_context)
    try:
        results = [sequence.run(scenario, "postfix") for scenario in (plain, refused, plain)]
    finally:
        sequence.close()
    first, broken, after = results
    assert broken.status == CONFIG_ERROR, (broken.status, broken.error)
    # The MTA's own words, as on a topology of its own.
    assert "fatal: chdir(/nonexistent): No such file or directory" in (broken.error or ""), broken.error
    # The standard relay is back for the next scenario, on the same topology.
    assert (first.status, after.status) == (PASSED, PASSED), [(r.error, r.failures) for r in (first, after)]
    assert first.run_id == after.run_id, (first.run_id, after.run_id)


def test_a_role_a_scenario_adds_is_started_for_it_and_removed_before_the_next(
        run_context: RunContext, tmp_path: Path) -> None:
    """Scenario 10 (a second 521 host, backup, like nomail) between two plain scenarios on one topology:
    backup runs, with its capture, for 10 only; the standard roles keep their containers."""
    plain = load_scenario(_write(tmp_path, "plain.yaml", PLAIN))
    added = load_scenario(SCENARIOS / "10-two-mx-both-521.yaml")
    sequence = ScenarioSequence(run_context)
    roles: list[list[str]] = []
    captured: list[list[str]] = []
    containers: list[dict[str, str]] = []
    try:
        results = []
        for scenario in (plain, added, plain):
            results.append(sequence.run(scenario, "postfix"))
            assert sequence.shared is not None
            roles.append(sorted(sequence.shared.topology.hosts))
            captured.append(sorted(sequence.shared.captures))
            containers.append({r: h.container_id for r, h in sequence.shared.topology.hosts.items()})
        run_id = sequence.shared.run_id
        backup_left = run_context.client.containers.list(
            all=True, filters={"label": [f"{RUN_LABEL}={run_id}", f"{ROLE_LABEL}=backup"]})
    finally:
        sequence.close()
    assert [r.status for r in results] == [PASSED] * 3, [(r.name, r.error, r.failures) for r in results]
    assert len({r.run_id for r in results}) == 1, [r.run_id for r in results]
    assert roles == [["dns", "mx", "nomail", "relay"], ["backup", "dns", "mx", "nomail", "relay"],
                     ["dns", "mx", "nomail", "relay"]], roles
    assert captured == [["mx", "nomail", "relay"], ["backup", "mx", "nomail", "relay"],
                        ["mx", "nomail", "relay"]], captured
    assert backup_left == [], backup_left
    for role in ("dns", "mx", "relay", "nomail"):
        assert len({c[role] for c in containers}) == 1, (role, containers)


def test_an_mta_sts_policy_host_is_started_replaced_and_removed_as_the_scenarios_need(
        run_context: RunContext, tmp_path: Path) -> None:
    """plain, 33 (policy in enforce mode), 34 (testing mode), plain on one Postfix topology: the policy
    host serves each scenario's own policy (a new one for 34: 33 deferred, 34 delivered, as each
    expects) and is gone for the last; the policy daemon of the relay forgets the policy in between."""
    plain = load_scenario(_write(tmp_path, "plain.yaml", PLAIN))
    enforce, testing = (load_scenario(SCENARIOS / name) for name in (
        "33-relay-mta-sts-enforce-certificate-mismatch-deferred.yaml",
        "34-relay-mta-sts-testing-certificate-mismatch-delivered.yaml"))
    sequence = ScenarioSequence(run_context)
    policy_hosts: list[str | None] = []
    try:
        results = []
        for scenario in (plain, enforce, testing, plain):
            results.append(sequence.run(scenario, "postfix"))
            assert sequence.shared is not None
            host = sequence.shared.topology.hosts.get(POLICY_ROLE)
            policy_hosts.append(host.container_id if host is not None else None)
        run_id = sequence.shared.run_id
        left = run_context.client.containers.list(
            all=True, filters={"label": [f"{RUN_LABEL}={run_id}", f"{ROLE_LABEL}={POLICY_ROLE}"]})
    finally:
        sequence.close()
    assert [r.status for r in results] == [PASSED] * 4, [(r.name, r.error, r.failures) for r in results]
    assert len({r.run_id for r in results}) == 1, [r.run_id for r in results]
    first, for_enforce, for_testing, last = policy_hosts
    assert first is None and last is None, policy_hosts
    assert for_enforce is not None and for_testing is not None and for_enforce != for_testing, policy_hosts
    assert left == [], left


def test_a_zone_changed_between_two_scenarios_is_answered_by_the_resolver_at_once(run_context: RunContext) -> None:
    """Unbound may keep an answer for a second (cache-max-ttl: 1): a TLSA record the last scenario's
    relay looked up, then changed for the next scenario (a replaced mx's new key), was still answered
    from that cache when the next relay asked, and a valid DANE scenario was deferred as the one before.
    The zones served, the resolver answers the new record at once."""
    with scenario_ran(run_context, "31-relay-dane-valid-tlsa-delivered.yaml") as (first, shared, plan):
        (served_tlsa,) = [r for r in plan.records if r.rtype == "TLSA"]
        resolver = shared.topology.address(RESOLVER_ROLE)
        before = _answer(resolver, served_tlsa.name)  # now in the resolver's cache
        changed = replace(served_tlsa, rdata="3 1 1 " + "ab" * 32)
        served = ServedDns(list(plan.records), signer=shared.topology.signer)
        served.change([changed], [])
        shared.serve_dns(served)
        after = _answer(resolver, served_tlsa.name)
    assert first.status == PASSED, (first.error, first.failures)
    assert before == {_tlsa(served_tlsa.rdata)}, (before, served_tlsa.rdata)
    assert after == {_tlsa(changed.rdata)}, after


def _in_turn(run_context: RunContext, scenarios: Sequence[Scenario], mta: str,
             look: Callable[[SharedTopology], T]) -> tuple[list[ScenarioResult], list[T]]:
    """``scenarios`` one after another on one ScenarioSequence, and what ``look`` saw of its topology
    after each (still running)."""
    sequence = ScenarioSequence(run_context)
    results: list[ScenarioResult] = []
    seen: list[T] = []
    try:
        for scenario in scenarios:
            results.append(sequence.run(scenario, mta))
            assert sequence.shared is not None
            seen.append(look(sequence.shared))
    finally:
        sequence.close()
    return results, seen


def _containers(shared: SharedTopology) -> dict[str, str]:
    return {role: h.container_id for role, h in shared.topology.hosts.items()}


def _answer(server: str, name: str) -> set[dns.rdata.Rdata]:
    reply = dns.query.udp(dns.message.make_query(name, "TLSA", want_dnssec=True), server, timeout=3.0)
    return {rdata for rrset in reply.answer if rrset.rdtype == dns.rdatatype.TLSA for rdata in rrset}


def _tlsa(text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, text)


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path
