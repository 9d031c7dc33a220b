"""What the scenario's DNS server serves as dns_fault and dns_change steps go by (harness.dns.served),
and how those steps load: without Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.dns.served import DNSDIST_CONF, DnsFault, ServedDns, dnsdist_conf
from harness.dns.zones import ResolvedRecord, resolve_records, standard_records
from harness.errors import ScenarioError
from harness.expect.judge import judge
from harness.observe.observations import FaultObservation
from harness.scenario.loader import load_scenario
from harness.scenario.model import DnsChangeStep, DnsFaultStep, DnsRecord, Mark

ADDRESSES = {"dns": "10.0.0.2", "mx": "10.0.0.10", "relay": "10.0.0.11", "nomail": "10.0.0.12"}
MARK = Mark("s.yaml", 3, 5)


def _served() -> ServedDns:
    return ServedDns(resolve_records(standard_records(ADDRESSES), ADDRESSES))


def _record(name: str, rtype: str, value: str) -> ResolvedRecord:
    return resolve_records([DnsRecord(name, rtype, value, None, 60, MARK)], ADDRESSES)[0]


def test_the_latest_step_about_a_name_and_type_wins_and_normal_lifts_it() -> None:
    served = _served()
    served.fault("example.test.", "MX", "servfail")
    served.fault("example.test.", "MX", "timeout")
    served.fault("example.test.", "A", "nxdomain")
    assert sorted((f.rtype, f.answer) for f in served.faults.values()) == [("A", "nxdomain"), ("MX", "timeout")]
    served.fault("example.test.", "A", "normal")
    assert [(f.rtype, f.answer) for f in served.faults.values()] == [("MX", "timeout")]
    served.fault("example.test.", None, "servfail")  # a whole name's fault replaces its types' faults
    assert list(served.faults.values()) == [DnsFault("example.test.", None, "servfail")]
    served.fault("example.test.", None, "normal")
    assert served.faults == {}


def test_only_what_nsd_cannot_answer_goes_to_dnsdist() -> None:
    served = _served()
    served.fault("example.test.", None, "servfail")
    files = served.files(ns_address="10.0.0.2", serial=7)
    assert files[DNSDIST_CONF] == ""  # NSD alone: dns-start starts no dnsdist
    assert "example.test.zone" not in files  # NSD's own SERVFAIL: a zone without its file
    served.fault("origin.test.", "MX", "servfail")
    conf = served.files(ns_address="10.0.0.2", serial=7)[DNSDIST_CONF]
    assert 'fault("origin.test.", 15, "SERVFAIL", RCodeAction(DNSRCode.SERVFAIL))' in conf
    assert "example.test" not in conf


def test_dnsdist_rules_put_a_type_before_a_whole_name_and_a_deeper_name_first() -> None:
    conf = dnsdist_conf([DnsFault("example.test.", None, "timeout"), DnsFault("example.test.", "MX", "servfail"),
                         DnsFault("mx.example.test.", None, "timeout"),
                         DnsFault("a.mx.example.test.", "A", "nxdomain")])
    rules = [line for line in conf.splitlines() if line.startswith("fault(")]
    assert [r.split(",")[0] for r in rules] == ['fault("a.mx.example.test."', 'fault("example.test."',
                                                 'fault("mx.example.test."', 'fault("example.test."']
    assert rules[0].endswith('{aa=true}))') and '"example.test.", 60' in rules[0]  # NXDOMAIN with the zone's SOA
    assert rules[2].endswith("DropAction())") and ", nil, " in rules[2]
    assert 'setSecurityPollSuffix("")' in conf  # no query leaves the run's network
    assert dnsdist_conf([]) == ""


def test_a_name_that_would_need_quoting_never_reaches_dnsdist() -> None:
    with pytest.raises(ValueError, match="unsafe"):
        dnsdist_conf([DnsFault('a"b.example.test.', "A", "servfail")])


def test_a_change_replaces_a_name_and_type_and_remove_drops_it() -> None:
    served = _served()
    served.change([_record("example.test", "MX", "20 nomail.sendonly.test.")], [("mx.example.test.", "A")])
    mx = [r.rdata for r in served.records if (r.name, r.rtype) == ("example.test.", "MX")]
    assert mx == ["20 nomail.sendonly.test."]
    assert not [r for r in served.records if r.name == "mx.example.test."]
    assert served.domain_addresses("example.test") == {ADDRESSES["nomail"]}  # no_connection follows the change
    zone = served.files(ns_address="10.0.0.2", serial=9)["example.test.zone"]
    assert "20 nomail.sendonly.test." in zone and "mx.example.test." not in zone.replace("IN MX", "")


def test_records_a_fault_touches_are_not_expected_to_answer() -> None:
    served = _served()
    served.fault("example.test.", "MX", "servfail")
    served.fault("origin.test.", None, "timeout")
    answering = {(r.name, r.rtype) for r in served.answering()}
    assert ("example.test.", "MX") not in answering and ("mx.example.test.", "A") in answering
    assert not [key for key in answering if key[0].endswith("origin.test.")]


STEPS = """\
name: dns steps
description: a fault by type, a timeout and a change
dns:
  - {name: dead.hosts.test, type: A, address_of: unreachable}
steps:
  - dns_fault: {name: Example.Test, type: MX, answer: servfail}
  - dns_fault: {name: origin.test, answer: timeout}
  - dns_change:
      set:
        - {name: example.test, type: MX, value: "10 dead.hosts.test."}
      remove:
        - {name: MX.example.test, type: A}
  - smtp: {host: relay, mail_from: a@origin.test, rcpt_to: b@example.test}
"""


def test_dns_steps_load_with_types_timeouts_and_changes(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(STEPS)
    typed, timeout, change, _ = load_scenario(path).steps
    assert isinstance(typed, DnsFaultStep) and (typed.name, typed.rtype, typed.answer) == ("example.test.", "MX",
                                                                                             "servfail")
    assert isinstance(timeout, DnsFaultStep) and (timeout.rtype, timeout.answer) == (None, "timeout")
    assert isinstance(change, DnsChangeStep) and change.remove == (("mx.example.test.", "A"),)
    assert [r.value for r in change.replace] == ["10 dead.hosts.test."] and change.mark.line == 8


@pytest.mark.parametrize(("step", "line", "why"), [
    # A CNAME where records of the name remain: the zone the change leaves is checked as a run renders it.
    ("  - dns_change:\n      set:\n        - {name: mx.example.test, type: CNAME, value: relay.origin.test.}\n",
     7, "a CNAME cannot coexist with A records"),
    ("  - dns_change:\n      set:\n        - {name: example.test, type: MX, value: \"ten mx\"}\n",
     7, "not valid MX rdata"),
    ("  - dns_change: {}\n", 5, ""),
    ("  - dns_fault: {name: 'a\\\"b.example.test', answer: servfail}\n", 5, "letters, digits"),
    ("  - dns_fault: {name: example.test, type: ANY, answer: servfail}\n", 5, "query type"),
])
def test_a_bad_dns_step_is_a_located_scenario_error(tmp_path: Path, step: str, line: int, why: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: bad\ndescription: bad dns step\nsteps:\n  - smtp: {host: relay, mail_from: a@origin.test, "
                    "rcpt_to: b@example.test}\n" + step)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.line == line and why in caught.value.detail, str(caught.value)


def test_a_dns_change_the_server_did_not_take_fails_its_step() -> None:
    step = DnsChangeStep(replace=(), remove=(("mx.example.test.", "A"),), mark=MARK)
    assert judge(4, step, FaultObservation("mx.example.test A", "changed", 1.0, 0.4)) == []
    [failure] = judge(4, step, FaultObservation("mx.example.test A", "changed", 1.0, 20.0, "dns did not answer"))
    assert failure.kind == "dns_change" and "mx.example.test A" in failure.expected
    assert failure.observed == "dns did not answer" and failure.mark == MARK
