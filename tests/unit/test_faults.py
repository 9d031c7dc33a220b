"""Fault steps without Docker: loaded with their marks, judged from their observation, kept off shared
topologies, and a role started again held at its start gate until its capture follows it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import harness.topology.faults as faults
from harness.dns.zones import ResolvedRecord, faulted_zone_files, resolve_records, standard_records
from harness.errors import ScenarioError
from harness.expect.judge import judge
from harness.expect.summary import summarize
from harness.observe.capture import CaptureError
from harness.observe.observations import FaultObservation, observation_from_json
from harness.scenario.loader import load_scenario
from harness.scenario.model import DnsFaultStep, Mark, RoleFaultStep
from harness.shard import topology_key

MARK = Mark("f.yaml", 4, 5)

FAULTED = """\
name: faulted
description: mx stopped and started again
steps:
  - fault: {role: mx, action: stop}
  - smtp: {host: relay, mail_from: a@origin.test, rcpt_to: b@example.test}
  - fault:
      role: mx
      action: start
      per_mta:
        exim: {reason: "only to show that a fault step can differ per implementation", action: restart}
"""

PLAIN = """\
name: plain
description: no fault
steps:
  - smtp: {host: relay, mail_from: a@origin.test, rcpt_to: b@example.test}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_fault_steps_load_with_their_marks_and_overrides(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, "f.yaml", FAULTED))
    stop, _, start = scenario.steps
    assert isinstance(stop, RoleFaultStep) and (stop.role, stop.action) == ("mx", "stop")
    assert (stop.mark.line, stop.mark.col) == (4, 5)
    assert isinstance(start, RoleFaultStep) and start.action == "start"
    exim = scenario.overrides[2]["exim"].step
    assert isinstance(exim, RoleFaultStep) and exim.action == "restart"


@pytest.mark.parametrize(("change", "message"), [
    ("action: stop}", "action: explode}"),
    ("role: mx, action: stop", "role: backup, action: stop"),
], ids=["unknown action", "unknown role"])
def test_a_bad_fault_step_is_a_located_scenario_error(tmp_path: Path, change: str, message: str) -> None:
    path = _write(tmp_path, "bad.yaml", FAULTED.replace(change, message))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.line == 4 and caught.value.exit_code == 2
    assert "explode" in str(caught.value) or "backup" in str(caught.value)


def test_a_fault_is_judged_on_what_docker_did() -> None:
    step = RoleFaultStep("mx", "unpause", MARK)
    done = FaultObservation("mx", "unpause", 1.0, 0.4)
    assert judge(3, step, done) == []
    refused = FaultObservation("mx", "unpause", 1.0, 0.0, "Docker refused to unpause mx: 409 not paused")
    [failure] = judge(3, step, refused)
    assert failure.expected == "mx unpaused and greeting" and "409 not paused" in failure.observed
    assert "409 not paused" in summarize(step, refused)
    assert observation_from_json(refused.to_json()) == refused


@pytest.mark.parametrize("action", ["stop", "kill", "disconnect", "restart", "pause"])
def test_a_scenario_with_role_faults_shares_the_topology_of_one_without(tmp_path: Path, action: str) -> None:
    # What a fault leaves is undone before the next scenario (SharedTopology.prepare restores the role),
    # and its neighbours' ARP caches are emptied, so a role taken off the network fails at once, as on
    # a fresh topology (tests/integration/test_faults.py runs one after a scenario that filled them).
    text = PLAIN + f"  - fault: {{role: mx, action: {action}}}\n"
    faulted = load_scenario(_write(tmp_path, "f.yaml", text))
    plain = load_scenario(_write(tmp_path, "p.yaml", PLAIN))
    for mta in ("postfix", "exim", "opensmtpd"):
        assert topology_key(faulted, mta) == topology_key(plain, mta) == (mta, ())


# -- DNS faults ------------------------------------------------------------------------------------------

ADDRESSES = {"dns": "10.0.0.2", "mx": "10.0.0.10", "relay": "10.0.0.11", "nomail": "10.0.0.12"}


def _standard() -> list[ResolvedRecord]:
    return resolve_records(standard_records(ADDRESSES), ADDRESSES)


def _zone_names(conf: str) -> list[str]:
    return [line.split('"')[1] for line in conf.splitlines() if line.strip().startswith("name:")]


def test_servfail_serves_a_zone_without_a_file_at_the_name() -> None:
    files = faulted_zone_files(_standard(), {"example.test": "servfail"}, ns_address="10.0.0.2")
    assert "example.test.zone" not in files  # the zone NSD cannot load answers SERVFAIL
    conf = files["zones.conf"]
    assert conf.count('name: "example.test."') == 1
    assert '"/etc/nsd/harness/servfail/example.test.zone"' in conf
    assert sorted(_zone_names(conf)) == ["example.test.", "harness.test.", "nullmx.test.", "origin.test.",
                                         "sendonly.test."]


def test_nxdomain_for_an_apex_serves_the_zone_above_it_with_only_soa_and_ns() -> None:
    files = faulted_zone_files(_standard(), {"example.test": "nxdomain"}, ns_address="10.0.0.2")
    assert "example.test" not in files["zones.conf"]
    assert "mx.example.test" not in "".join(files.values())  # every name below it goes too
    parent = [line for line in files["test.zone"].splitlines() if " IN " in line]
    assert [line.split()[3] for line in parent] == ["SOA", "NS"]


def test_nxdomain_below_an_apex_removes_only_that_name_and_below() -> None:
    files = faulted_zone_files(_standard(), {"mx.example.test": "nxdomain"}, ns_address="10.0.0.2")
    owners = [line.split()[0] for line in files["example.test.zone"].splitlines() if " IN " in line]
    assert "mx.example.test." not in owners and "example.test." in owners and "test.zone" not in files


def test_normal_is_no_fault() -> None:
    plain = faulted_zone_files(_standard(), {}, ns_address="10.0.0.2")
    assert faulted_zone_files(_standard(), {"example.test": "normal"}, ns_address="10.0.0.2") == plain


@pytest.mark.parametrize(("name", "why"), [
    ("test", "top-level domain"), ("ns.harness.test", "the DNS server's own zone"), ("a..b", "invalid DNS name"),
])
def test_a_dns_fault_name_is_checked_at_load_time(tmp_path: Path, name: str, why: str) -> None:
    text = PLAIN + f"  - dns_fault: {{name: \"{name}\", answer: servfail}}\n"
    with pytest.raises(ScenarioError) as caught:
        load_scenario(_write(tmp_path, "d.yaml", text))
    assert why in str(caught.value) and caught.value.line == 5


def test_a_scenario_with_a_dns_fault_shares_the_topology_of_one_without(tmp_path: Path) -> None:
    # The next scenario's zones are served (a dns restart when dnsdist's configuration differs).
    text = PLAIN + "  - dns_fault: {name: example.test, answer: nxdomain}\n"
    faulted = load_scenario(_write(tmp_path, "d.yaml", text))
    step = faulted.steps[-1]
    assert isinstance(step, DnsFaultStep) and step.name == "example.test."
    assert topology_key(faulted, "exim") == topology_key(load_scenario(_write(tmp_path, "p.yaml", PLAIN)), "exim")


def test_a_pause_waits_for_an_exec_still_being_started() -> None:
    # A pause that freezes runc's init of an exec hangs the engine on the container for good: the
    # fault waits until every exec runs (has a Pid) or has ended, for a bounded moment.
    from types import SimpleNamespace

    from harness.topology import faults

    polls: list[int] = []

    class Api:
        def inspect_container(self, container_id: str) -> dict[str, object]:
            return {"ExecIDs": ["watch", "done"]}

        def exec_inspect(self, exec_id: str) -> dict[str, object]:
            if exec_id == "done":
                return {"Pid": 0, "ExitCode": 0}
            polls.append(1)
            return {"Pid": 4242 if len(polls) >= 3 else 0, "ExitCode": None}

    container = SimpleNamespace(id="c", client=SimpleNamespace(api=Api()))
    faults._no_exec_starting(container)  # type: ignore[arg-type]
    assert len(polls) == 3  # waited through two looks at a starting exec, no longer


class _Container:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def start(self) -> None:
        self.calls.append("start")

    def restart(self, timeout: int) -> None:
        self.calls.append("restart")


def _gated_host(calls: list[str]) -> SimpleNamespace:
    container = _Container(calls)
    return SimpleNamespace(role="mx", start_gate=True, mta="postfix",
                           container=SimpleNamespace(get_wrapped_container=lambda: container))


@pytest.mark.parametrize("action", ["start", "restart"])
@pytest.mark.parametrize("capture_fails", [False, True], ids=["capture follows", "capture fails"])
def test_the_start_gate_opens_only_after_the_capture_follows_and_always_opens(
        monkeypatch: pytest.MonkeyPatch, action: str, capture_fails: bool) -> None:
    calls: list[str] = []
    monkeypatch.setattr(faults, "close_start_gate", lambda host: calls.append("close gate"))
    monkeypatch.setattr(faults, "open_start_gate", lambda host: calls.append("open gate"))
    monkeypatch.setattr(faults, "redo_setup", lambda host: calls.append("set up"))

    def resume(host: object) -> None:
        calls.append("capture listens")
        if capture_fails:
            raise CaptureError("tcpdump did not listen")

    host = _gated_host(calls)
    error = faults._act(SimpleNamespace(), host, action, resume)  # type: ignore[arg-type]
    assert calls == ["close gate", action, "set up", "capture listens", "open gate"]
    assert (error is not None and "tcpdump did not listen" in error) == capture_fails
    calls.clear()
    assert faults._act(SimpleNamespace(), host, action, None) is None  # type: ignore[arg-type]
    assert calls == [action, "set up"], "no capture to follow: nothing to hold the MTA for"


@pytest.mark.parametrize("action", sorted(faults.ENDS_PROCESSES | faults.BRINGS_BACK | {"pause", "disconnect"}))
def test_the_capture_is_asked_what_it_lost_before_its_tcpdump_ends_and_only_then(
        monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    # tcpdump is not PID 1: it is killed with the container's processes, its statistics unsaid.
    calls: list[str] = []
    monkeypatch.setattr(faults, "_act", lambda topology, host, act, resume: calls.append(act))
    monkeypatch.setattr(faults, "_back", lambda host: None)
    topology = SimpleNamespace(hosts={"mx": _gated_host(calls)})
    assert faults.do_fault(topology, "mx", action, ending=lambda host: calls.append("settle")) is None  # type: ignore[arg-type]
    ends = action in ("stop", "kill", "restart")
    assert calls == (["settle", action] if ends else [action])
