"""The MTA-STS fixtures of a scenario with mta_sts:, looked at from the host: the policy host serves the
policy over HTTPS with a certificate from the run's CA for mta-sts.<domain>, as text/plain; the TXT
record names the policy's id; and a policy whose mx names another host defers the message even when the
certificate is valid (the certificate must name a host the policy allows)."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from harness.mta.postfix import Postfix
from harness.observe.queue import HostCommands
from harness.plan import plan_scenario
from harness.runner import RunContext, bring_up, run_all
from harness.scenario.loader import load_scenario
from harness.topology.labels import new_run_id
from harness.topology.topology import DNS_ROLE, POLICY_PORT, POLICY_ROLE

from .conftest import COMPOSE, SCENARIOS, WatchedRunTls, harness

SCENARIO = """\
name: a policy to fetch
description: example.test's MTA-STS policy in enforce mode, the mx patterns as given
mta_sts:
  mode: enforce
  mx: [mx.example.test, "*.backup.example.test"]
  max_age: 600
tls:
  relay: {outbound: mta-sts}
steps:
  - smtp: {host: mx, mail_from: a@nullmx.test, rcpt_to: [bob@example.test]}
"""


def _fetch(address: str, hostname: str, ca_pem: bytes) -> tuple[str, str]:
    """GET /.well-known/mta-sts.txt over HTTPS, verifying the certificate for ``hostname``: status line and
    the rest of the response."""
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    with socket.create_connection((address, POLICY_PORT), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=hostname) as tls:
        tls.sendall(f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n"
                    .encode("ascii"))
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
    head, _, body = data.decode("ascii").partition("\r\n\r\n")
    return head, body


def test_policy_host_serves_the_policy_and_the_txt_record_names_it(tmp_path: Path, run_context: RunContext) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    scenario = load_scenario(path)
    assert scenario.mta_sts is not None
    plan = plan_scenario(scenario, COMPOSE, mta="postfix")
    topology = bring_up(run_context, plan, run_id=new_run_id(), keep_label=False)
    try:
        assert topology.tls is not None
        policy_host = topology.hosts[POLICY_ROLE]
        assert policy_host.hostname == "mta-sts.example.test"
        head, body = _fetch(policy_host.address, "mta-sts.example.test", topology.tls.ca_pem)
        assert head.startswith("HTTP/1.0 200") and "content-type: text/plain" in head.lower(), head
        assert body.splitlines() == ["version: STSv1", "mode: enforce", "mx: mx.example.test",
                                     "mx: *.backup.example.test", "max_age: 600"]
        # The certificate names mta-sts.example.test only: a client that expects another name refuses it.
        try:
            _fetch(policy_host.address, "mx.example.test", topology.tls.ca_pem)
        except ssl.SSLCertVerificationError as exc:
            assert "mx.example.test" in str(exc) or "match" in str(exc), exc
        else:
            raise AssertionError("the policy host's certificate was accepted for another name")
        dns_address = topology.address(DNS_ROLE)
        for name, rdtype, expected in [
            ("_mta-sts.example.test.", "TXT", f'"v=STSv1; id={scenario.mta_sts.policy_id}"'),
            ("mta-sts.example.test.", "A", policy_host.address),
        ]:
            answer = dns.query.udp(dns.message.make_query(name, rdtype), dns_address, timeout=5)
            rrset = answer.find_rrset(answer.answer, answer.question[0].name, answer.question[0].rdclass,
                                      dns.rdatatype.from_text(rdtype))
            assert [r.to_text() for r in rrset] == [expected], answer.to_text()
        # The relay's policy daemon runs, and asks the scenario's DNS (c-ares read resolv.conf after it
        # was written): it answers Postfix's socketmap query with the enforced policy.
        relay = topology.hosts["relay"].container.get_wrapped_container()
        query = b"postfix example.test"
        netstring = str(len(query)).encode() + b":" + query + b","
        script = ("import socket,sys; s=socket.create_connection(('127.0.0.1',8461),5); "
                  f"s.sendall({netstring!r}); print(s.recv(4096).decode())")

        def ask() -> str:
            return bytes(relay.exec_run(["python3", "-c", script]).output).decode()

        def daemon_pid() -> str:
            return bytes(relay.exec_run(["cat", "/run/mta-sts-daemon.pid"]).output).decode().strip()

        out = ask()
        assert "OK secure match=" in out and "mx.example.test" in out and ".backup.example.test" in out, out
        # The reset between two scenarios on a shared topology restarts it (its cache goes), and it
        # answers again before the reset returns.
        before = daemon_pid()
        Postfix().reset(HostCommands(topology.hosts["relay"]))
        assert daemon_pid() not in ("", before)
        assert "OK secure match=" in ask()
    finally:
        topology.destroy()


def test_a_policy_naming_another_mx_defers_even_a_valid_certificate(tmp_path: Path) -> None:
    text = (SCENARIOS / "33-relay-mta-sts-enforce-certificate-mismatch-deferred.yaml").read_text(encoding="utf-8")
    for old, new in [("mx: [mx.example.test]", "mx: [other.example.test]"),
                     ("mx: {certificate: wrong-name}", "mx: {certificate: valid}")]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "33-policy-names-another-mx.yaml"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "r.json"
    done = harness("run", str(path), "--mta", "postfix", "--json", str(out), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads(out.read_text())["scenarios"]
    assert result["status"] == "passed", done.stdout


def test_the_policy_hosts_key_lives_and_goes_with_the_run(run_context: RunContext,
                                                          run_keys: list[WatchedRunTls]) -> None:
    before = set(Path("/tmp").glob("mailflow-tls-*"))
    scenario = load_scenario(SCENARIOS / "33-relay-mta-sts-enforce-certificate-mismatch-deferred.yaml")
    (result,) = run_all(run_context, [scenario], mtas=["postfix"])
    assert result.status == "passed", result.failures or result.error
    (lab,) = run_keys
    # The run's CA, mx's broken certificate, the relay's (it trusts the CA), the policy host's: nothing else.
    assert lab.held == ["ca.pem", "mx/cert.pem", "mx/key.pem", "policy/cert.pem", "policy/key.pem",
                        "relay/cert.pem", "relay/key.pem"]
    assert not lab.directory.exists(), f"{lab.directory} outlived its run"
    assert set(Path("/tmp").glob("mailflow-tls-*")) == before
    left = run_context.client.containers.list(all=True, filters={"label": f"mailflow-harness.run={result.run_id}"})
    assert left == []
