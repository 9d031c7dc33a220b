"""Fault steps on real containers: a fault Docker refuses fails its step with Docker's words, and a
paused role really answers nothing until it is unpaused."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from harness.expect.results import PASSED
from harness.runner import RunContext, ScenarioSequence
from harness.scenario.loader import load_scenario
from harness.topology.labels import PID_LABEL, ROLE_LABEL
from harness.topology.topology import Topology

from .conftest import COMPOSE, ROOT, harness

REFUSED = """\
name: unpause a role that is not paused
description: Docker refuses; the step must fail with its words, not pass
mta: [postfix]
steps:
  - fault: {role: mx, action: unpause}
"""

PAUSED = """\
name: a paused mx answers nothing, then greets again
description: the client's session to a paused mx times out; after unpause it is accepted
mta: [postfix]
steps:
  - fault: {role: mx, action: pause}
  - smtp:
      host: mx
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
      timeout: 3
      expect:
        connect: 220
  - fault: {role: mx, action: unpause}
  - smtp:
      host: mx
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
      expect:
        end_of_data: 250
"""


def _run(tmp_path: Path, text: str) -> tuple[int, dict[str, object], str]:
    scenario = tmp_path / "fault.yaml"
    scenario.write_text(text)
    out = tmp_path / "r.json"
    done = harness("run", str(scenario), "--json", str(out))
    return done.returncode, json.loads(out.read_text())["scenarios"][0], done.stdout + done.stderr


def test_a_fault_docker_refuses_fails_its_step(engine: docker.DockerClient, tmp_path: Path) -> None:
    code, result, output = _run(tmp_path, REFUSED)
    assert code == 1, output
    [failure] = result["failures"]  # type: ignore[index]
    assert failure["kind"] == "fault" and failure["expected"] == "mx unpaused and greeting"
    assert "Docker refused to unpause mx" in failure["observed"] and "fault.yaml:5:5" in output


def test_a_paused_role_answers_nothing_until_unpaused(engine: docker.DockerClient, tmp_path: Path) -> None:
    code, result, output = _run(tmp_path, PAUSED)
    assert code == 1, output  # the session to the paused mx cannot get its 220
    [failure] = result["failures"]  # type: ignore[index]
    assert failure["step"] == 2 and failure["stage"] == "CONNECT", failure
    steps = result["steps"]  # type: ignore[index]
    assert [s["status"] for s in steps] == ["passed", "failed", "passed", "passed"], steps


DIES = """\
name: mx dies while the scenario runs
description: killed from outside (not by a fault step); the next session to it must say so at once
mta: [postfix]
steps:
  - smtp: {host: relay, mail_from: alice@origin.test, rcpt_to: bob@example.test}
  - queue_state: {host: relay, of: bounce, state: deferred, within: 8}
  - smtp:
      host: mx
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
      expect: {connect: 220}
"""


def _greets(engine: docker.DockerClient, mine: str, role: str) -> bool:
    """Whether the run's ``role`` is up and answers 220 on port 25."""
    for container in engine.containers.list(filters={"label": [f"{ROLE_LABEL}={role}", mine]}):
        address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        try:
            with socket.create_connection((address, 25), timeout=1) as conn:
                conn.settimeout(2)
                if conn.recv(512).startswith(b"220"):
                    conn.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            return False
    return False


def test_a_role_that_died_is_reported_as_what_it_is(engine: docker.DockerClient, tmp_path: Path) -> None:
    scenario = tmp_path / "dies.yaml"
    scenario.write_text(DIES)
    out = tmp_path / "r.json"
    run = subprocess.Popen([sys.executable, "-m", "harness", "--compose", str(COMPOSE), "run", str(scenario),
                            "--json", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    killed = False
    mine = f"{PID_LABEL}={run.pid}"
    # Once mx greets, a moment later the first session is over and the 8 s wait on (for a DSN that never
    # comes: nothing can end that wait early, as a message gone from every queue ends one for the
    # message itself). A session of the test's own from the host is the client's, not a hop.
    while not _greets(engine, mine, "mx"):
        assert time.monotonic() < deadline and run.poll() is None, "the topology did not start"
        time.sleep(0.2)
    time.sleep(2)
    for container in engine.containers.list(filters={"label": [f"{ROLE_LABEL}=mx", mine]}):
        container.kill()
        killed = True
    output, _ = run.communicate(timeout=300)
    assert killed, output
    result = json.loads(out.read_text())["scenarios"][0]
    last = result["steps"][-1]
    assert last["status"] == "failed", last
    assert "mx's container exited with code 137" in output, output
    assert result["steps"][-1]["observation"]["exchanges"][0]["at_s"] > 0


LEAVES_BROKEN = """\
name: leaves its topology broken
description: mx stopped, relay off the network, nomail paused, example.test answering SERVFAIL, at the end
steps:
  - fault: {role: mx, action: stop}
  - fault: {role: relay, action: disconnect}
  - fault: {role: nomail, action: pause}
  - dns_fault: {name: example.test, answer: servfail}
"""

RESTARTS = """\
name: restarts mx
description: mx's container restarted, its mail watch ended with it
steps:
  - fault: {role: mx, action: restart}
"""

RECONNECTS = """\
name: relay off the network and back
description: the relay's container gets a new interface in the same network namespace
steps:
  - fault: {role: relay, action: disconnect}
  - fault: {role: relay, action: reconnect}
"""

AFTER = """\
name: the next scenario on the same topology
description: every role as a fresh topology has it; the message delivered through the relay, seen on its hop
steps:
  - smtp: {host: relay, mail_from: alice@origin.test, rcpt_to: bob@example.test}
  - delivery: {host: mx, mailbox: bob@example.test, within: 15, copies: 1}
  - hop: {hop: relay->mx, expect: {data: 354, end_of_data: 250}}
  - smtp: {host: nomail, mail_from: alice@origin.test, rcpt_to: bob@example.test, expect: {connect: 521}}
"""


@pytest.mark.parametrize("mta", ["postfix", "opensmtpd"])
def test_what_a_fault_scenario_leaves_is_undone_before_the_next_one(
        run_context: RunContext, tmp_path: Path, mta: str) -> None:
    # Without the restore the reset fails on the stopped mx and a new topology runs the next scenario:
    # the run ids would differ (and a paused nomail or an unplugged relay would fail it outright).
    scenarios = {name: load_scenario(_write(tmp_path, f"{name}.yaml", text))
                 for name, text in (("broken", LEAVES_BROKEN), ("restarts", RESTARTS), ("after", AFTER),
                                    ("reconnects", RECONNECTS))}
    sequence = ScenarioSequence(run_context)
    retrans = []
    try:
        results = [sequence.run(scenarios[name], mta) for name in ("broken", "after", "restarts", "after")]
        assert sequence.shared is not None
        watching = {role: watch.alive for role, watch in sequence.shared.mail_watches.items()}
        # Each MTA's own view of its ARP probe interval (capture-start, neighbour-table): set again in the
        # new network namespace of the restarted mx, and on the relay's new interface after it was
        # reconnected, by the restore before a scenario and by a reconnect step itself.
        retrans.append(_arp_retrans_ms(sequence.shared.topology))
        # The scenario's DNS server, as at the start: the engine wrote a new resolv.conf into the
        # restarted mx (nameserver 127.0.0.11, which answers the roles' host names itself).
        dns = sequence.shared.topology.address("dns")
        nameservers = {role: host.shell.run(["grep", "^nameserver", "/etc/resolv.conf"]).stdout.decode().strip()
                       for role, host in sequence.shared.topology.hosts.items() if host.mta is not None}
        results.append(sequence.run(scenarios["reconnects"], mta))
        retrans.append(_arp_retrans_ms(sequence.shared.topology))
    finally:
        sequence.close()
    assert [r.status for r in results] == [PASSED] * 5, [(r.name, r.error, r.failures) for r in results]
    assert len({r.run_id for r in results}) == 1, [r.run_id for r in results]
    # The restarted mx has a mail watch again (a delivery is noticed as it is written, not polled for).
    assert watching == {"mx": True, "relay": True, "nomail": True}, watching
    assert retrans == [{"mx": "200", "relay": "200", "nomail": "200"}] * 2, retrans
    assert nameservers == dict.fromkeys(("mx", "relay", "nomail"), f"nameserver {dns}"), nameservers


@pytest.mark.parametrize("mta", ["postfix", "opensmtpd"])
def test_a_role_stopped_after_its_neighbours_spoke_to_it_is_unreachable_at_once(
        run_context: RunContext, tmp_path: Path, mta: str) -> None:
    # The first scenario leaves mx in the relay's neighbour (ARP) cache. Unless prepare empties it, the
    # relay's SYNs to the stopped mx go to that address unanswered, where a fresh topology says "no route
    # to host" at once: Postfix's hop then has no answer to its connection attempt, OpenSMTPD's message
    # stays active instead of deferred (both seen before the caches were emptied).
    after = load_scenario(_write(tmp_path, "after.yaml", AFTER))
    stopped = load_scenario(ROOT / "scenarios" / "19-mx-down-then-back-delivered-once.yaml")
    sequence = ScenarioSequence(run_context)
    try:
        results = [sequence.run(scenario, mta) for scenario in (after, stopped)]
    finally:
        sequence.close()
    assert [r.status for r in results] == [PASSED] * 2, [(r.name, r.error, r.failures) for r in results]
    assert results[0].run_id == results[1].run_id, [r.run_id for r in results]


def _arp_retrans_ms(topology: Topology) -> dict[str, str]:
    """Each MTA's ARP probe interval, on every interface but lo, as its own container reads it."""
    read = ("for d in /proc/sys/net/ipv4/neigh/*; do "
            "[ ${d##*/} = lo ] || [ ${d##*/} = default ] || cat $d/retrans_time_ms; done")
    return {role: host.shell.run(["sh", "-c", read]).stdout.decode().strip()
            for role, host in topology.hosts.items() if host.mta is not None}


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


TRIED_A_STOPPED_MX = """\
name: the relay tries a stopped mx
description: no SYN reaches the wire (nothing answers ARP for mx); the attempt must still be seen
steps:
  - fault: {role: mx, action: stop}
  - smtp:
      host: relay
      mail_from: alice@origin.test
      rcpt_to: bob@example.test
      expect:
        end_of_data: 250
  - queue_state: {host: relay, state: deferred, reason: "(?i)no route to host|network error", within: 30}
  - no_connection: {from: relay, to: mx, within: 2}
  - no_connection: {from: relay, to: nomail, within: 1}
"""


def test_no_connection_sees_an_attempt_at_an_address_nothing_answers(run_context: RunContext, tmp_path: Path) -> None:
    # The kernel fails the relay's connect with "No route to host" before any SYN leaves: its unanswered
    # ARP requests are what shows it tried. (Before they were captured, "no connection to mx" passed.)
    scenario = load_scenario(_write(tmp_path, "tried.yaml", TRIED_A_STOPPED_MX))
    sequence = ScenarioSequence(run_context)
    try:
        result = sequence.run(scenario, "postfix")
    finally:
        sequence.close()
    assert [(f.step, f.kind) for f in result.failures] == [(4, "no_connection")], (result.error, result.failures)
    assert "asked for by ARP, no SYN followed" in result.failures[0].observed
    # The last step looks at every capture's losses, the stopped mx's among them: its tcpdump ended with
    # its container, and what it said before the stop stands (it lost nothing here).
    assert result.error is None, result.error
    assert result.steps[-1].status == PASSED, result.steps[-1]
