"""MTA-STS without Docker: the policy a scenario's mta_sts: renders (RFC 8461 key/value lines and the
TXT record's id), the records and the policy host a plan adds, the MTAs' configuration for outbound:
mta-sts, what makes two scenarios' topologies differ, and the loader's mta_sts: errors at file:line:col."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from harness.errors import ScenarioError
from harness.mta.base import TlsOffer
from harness.mta.exim import Exim
from harness.mta.opensmtpd import OpenSmtpd
from harness.mta.postfix import MTA_STS_CONF, Postfix
from harness.plan import plan_scenario
from harness.scenario.loader import load_scenario
from harness.scenario.model import MtaSts
from harness.shard import topology_key
from harness.topology.topology import POLICY_ROLE, plan_addresses

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
HEAD = "name: t\ndescription: d\n"
STEPS = "steps:\n  - smtp: {host: mx, mail_from: a@origin.test, rcpt_to: [b@example.test]}\n"


def _write(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + body + STEPS, encoding="utf-8")
    return path


# --- the policy ---------------------------------------------------------------------------------------


def test_policy_text_is_rfc8461_lines_and_its_id_follows_its_content() -> None:
    policy = MtaSts(domain="example.test", mode="enforce", mx=("mx.example.test", "*.example.test"), max_age=600)
    assert policy.policy_text == ("version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\n"
                                  "mx: *.example.test\r\nmax_age: 600\r\n")
    # RFC 8461 section 3.1: 1-32 alphanumeric characters; another policy, another id.
    assert policy.policy_id.isalnum() and 1 <= len(policy.policy_id) <= 32
    testing = MtaSts(domain="example.test", mode="testing", mx=("mx.example.test", "*.example.test"), max_age=600)
    assert testing.policy_id != policy.policy_id


def test_loader_defaults_mx_to_the_domains_mx_hosts(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, "mta_sts: {mode: testing}\n"))
    assert s.mta_sts == MtaSts(domain="example.test", mode="testing", mx=("mx.example.test",))
    declared = load_scenario(_write(tmp_path, "dns:\n  - {name: example.test, type: MX, value: 20 mx2.example.test}\n"
                                              "mta_sts: {mode: enforce}\n"))
    assert declared.mta_sts is not None and declared.mta_sts.mx == ("mx.example.test", "mx2.example.test")
    assert load_scenario(_write(tmp_path, "mta_sts: {mode: enforce, mx: [Other.Example.Test.]}\n")
                         ).mta_sts == MtaSts("example.test", "enforce", ("other.example.test",))


@pytest.mark.parametrize(("body", "line", "col", "words"), [
    ("mta_sts: {mode: enforce, domain: elsewhere.test}\n", 3, 34, "'elsewhere.test' is not served"),
    ("mta_sts: {mode: strict}\n", 3, 17, "enforce, testing or none"),
    ("mta_sts: {}\n", 3, 10, "mode"),
    ("mta_sts: {mode: enforce, domain: nullmx.test}\n", 3, 1, "nullmx.test has no MX host"),
    ("mta_sts: {mode: enforce, mx: []}\n", 3, 30, "non-empty list"),
    ("mta_sts: {mode: enforce, max_age: 40000000}\n", 3, 35, "0 to 31557600"),
    ("mta_sts: {mode: enforce, certificate: forged}\n", 3, 39, "expired"),
    ("tls:\n  relay: {outbound: sts}\n", 4, 21, "mta-sts"),
])
def test_loader_errors_point_at_the_node(tmp_path: Path, body: str, line: int, col: int, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(_write(tmp_path, body))
    assert (info.value.line, info.value.col) == (line, col), str(info.value)
    assert words in str(info.value)


# --- the plan -----------------------------------------------------------------------------------------


def test_plan_adds_the_policy_host_its_name_and_the_txt_record(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, "mta_sts: {mode: enforce}\ntls:\n  relay: {outbound: mta-sts}\n"))
    assert s.mta_sts is not None
    plan = plan_scenario(s, COMPOSE, mta="postfix")
    (policy,) = [h for h in plan.topology.hosts if h.role == POLICY_ROLE]
    assert policy.hostname == "mta-sts.example.test" and policy.mta is None
    assert policy.tls is not None and policy.tls.certificate == "valid"
    assert POLICY_ROLE in plan.topology.infrastructure
    addresses = plan_addresses(plan.topology, ipaddress.IPv4Network("10.9.9.0/24"))
    setup = plan.zone_setup({**addresses, "unreachable": "10.9.9.254"})
    zone = setup.files["example.test.zone"]
    assert f'_mta-sts.example.test. 60 IN TXT "v=STSv1; id={s.mta_sts.policy_id}"' in zone
    assert f"mta-sts.example.test. 60 IN A {addresses[POLICY_ROLE]}" in zone


def test_a_policy_is_part_of_the_topology_key(tmp_path: Path) -> None:
    def key(body: str, name: str) -> object:
        return topology_key(load_scenario(_write(tmp_path, body, name)), "postfix")
    tls = "tls:\n  relay: {outbound: mta-sts}\n"
    enforce = key("mta_sts: {mode: enforce}\n" + tls, "a.yaml")
    assert enforce == key("mta_sts: {mode: enforce}\n" + tls, "b.yaml")
    assert enforce != key("mta_sts: {mode: testing}\n" + tls, "c.yaml")
    assert enforce != key("mta_sts: {mode: enforce, mx: [other.example.test]}\n" + tls, "d.yaml")
    assert enforce != key("mta_sts: {mode: enforce, certificate: expired}\n" + tls, "e.yaml")
    assert enforce != key(tls, "f.yaml")


# --- the MTAs -----------------------------------------------------------------------------------------

OFFER = TlsOffer("relay.origin.test", False, "mta-sts")


def test_postfix_asks_the_policy_daemon_and_starts_it_after_dns() -> None:
    driver = Postfix()
    files = driver.role_files(COMPOSE / "postfix" / "relay", {}, OFFER)
    main = files["main.cf"].decode()
    assert "smtp_tls_security_level = may" in main
    assert "smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix" in main
    daemon = files[MTA_STS_CONF].decode()
    assert "port: 8461" in daemon and "type: internal" in daemon and "strict_testing: false" in daemon
    assert driver.started_commands(OFFER) == [["/usr/local/bin/mta-sts-start"]]
    # Any other policy: no daemon, nothing to start.
    may = TlsOffer("relay.origin.test", False, "may")
    assert MTA_STS_CONF not in driver.role_files(COMPOSE / "postfix" / "relay", {}, may)
    assert driver.started_commands(may) == [] and driver.started_commands(None) == []


def test_exim_and_opensmtpd_send_as_at_may() -> None:
    for driver in (Exim(), OpenSmtpd()):
        sts = driver.role_files(COMPOSE / driver.name / "relay", {}, OFFER)
        may = driver.role_files(COMPOSE / driver.name / "relay", {}, TlsOffer("relay.origin.test", False, "may"))
        assert sts == may, driver.name
        assert driver.started_commands(OFFER) == []


@pytest.mark.parametrize(("body", "words"), [
    ("roles:\n  policy: {like: mx}\n", "'policy' is the MTA-STS policy host"),
    ("roles:\n  resolver: {like: nomail}\n", "'resolver' is the validating resolver"),
    ("tls:\n  policy: {certificate: valid}\n", "'policy' is the MTA-STS policy host"),
])
def test_the_infrastructure_roles_names_are_reserved(tmp_path: Path, body: str, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(_write(tmp_path, body))
    assert (info.value.line, info.value.col) == (4, 3) and words in str(info.value), str(info.value)
