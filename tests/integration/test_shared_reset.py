"""A shared topology the harness cannot reset between two scenarios (here: its mx ended in between)
is replaced: the next scenario runs on a new topology and passes, the cause is said once with the
role's own words, and nothing of the old topology is left."""

from __future__ import annotations

import io
import socket

import docker
import pytest

from harness.expect.results import PASSED
from harness.mta.base import ACTIVE_OPENS
from harness.mta.opensmtpd import OpenSmtpd
from harness.observe.capture import HopCapture
from harness.observe.queue import HostCommands
from harness.report.progress import Progress
from harness.runner import RunContext, ScenarioSequence, _reset
from harness.scenario.loader import load_scenario
from harness.topology.labels import RUN_LABEL
from harness.topology.topology import Host

from .conftest import SCENARIOS


def test_a_topology_that_cannot_be_reset_is_replaced_and_the_cause_said(
        engine: docker.DockerClient, run_context: RunContext) -> None:
    said = io.StringIO()
    ctx = RunContext(engine, run_context.images, run_context.compose_dir, Progress(said))
    first = load_scenario(SCENARIOS / "01-direct-354.yaml")
    second = load_scenario(SCENARIOS / "14-refused-rcpt-no-bounce.yaml")
    sequence = ScenarioSequence(ctx)
    try:
        assert sequence.run(first, "opensmtpd").status == PASSED
        assert sequence.shared is not None
        old = sequence.shared.run_id
        mx = sequence.shared.topology.hosts["mx"].container.get_wrapped_container()
        # smtpd killed without mta-reset's flag: mta-start (PID 1) ends with it, and so does mx.
        assert mx.exec_run(["sh", "-c", "kill -KILL $(cat /run/mta.pid)"]).exit_code == 0
        mx.wait(timeout=20)

        result = sequence.run(second, "opensmtpd")

        assert result.status == PASSED, result.error or result.failures
        assert sequence.shared is not None and sequence.shared.run_id != old
        lines = [line for line in said.getvalue().splitlines() if "could not be reset" in line]
        assert len(lines) == 1, said.getvalue()
        assert "14-refused-rcpt-no-bounce.yaml [opensmtpd]" in lines[0]
        assert "mx exited with code 137" in said.getvalue(), said.getvalue()
        assert engine.containers.list(all=True, filters={"label": f"{RUN_LABEL}={old}"}) == []
    finally:
        sequence.close()


def test_a_postfix_reset_ends_every_daemon_that_takes_mail_or_keeps_state(run_context: RunContext) -> None:
    """qmgr (dead destinations, backoff), the connection cache and an idle smtpd of the last scenario are
    gone once the reset returns; new ones run for the next."""
    sequence = ScenarioSequence(run_context)
    try:
        assert sequence.run(load_scenario(SCENARIOS / "02-relay-354.yaml"), "postfix").status == PASSED
        assert sequence.shared is not None
        relay = sequence.shared.topology.hosts["relay"]
        with socket.create_connection((relay.address, 25), timeout=10) as sock:
            sock.recv(512)  # the greeting: an smtpd runs, and stays idle after the session for the next
            sock.sendall(b"QUIT\r\n")
            sock.recv(512)
        before = _daemons(relay)
        _reset(relay)
        after = _daemons(relay)
    finally:
        sequence.close()
    assert {"qmgr", "smtpd"} <= set(before.values()), before
    assert "qmgr" in after.values(), after
    assert not before.keys() & after.keys(), (before, after)


def _daemons(host: Host) -> dict[str, str]:
    """Postfix master's daemons that take mail or keep state, pid -> name."""
    script = ("for p in /proc/[0-9]*; do read -r pid comm state ppid rest < $p/stat 2>/dev/null || continue; "
              "[ $ppid = 1 ] && [ $state != Z ] && echo $pid $comm; done")
    out = host.shell.run(["sh", "-c", script]).stdout.decode()
    names = {"smtpd", "qmgr", "scache", "tlsmgr", "pickup", "anvil"}
    return {pid: comm.strip("()") for pid, comm in (line.split() for line in out.splitlines())
            if comm.strip("()") in names}


def _qmgr(host: Host) -> str:
    return next(pid for pid, name in _daemons(host).items() if name == "qmgr")


def test_a_role_is_reset_after_tcp_to_or_from_it_on_any_port_and_only_then(run_context: RunContext) -> None:
    """Between two scenarios, a role whose network namespace saw no TCP since its last reset keeps its
    daemons (nothing reached it that a reset would forget); one that saw any, on any port, is reset."""
    direct = load_scenario(SCENARIOS / "01-direct-354.yaml")  # client -> mx only
    sequence = ScenarioSequence(run_context)
    try:
        for _ in range(2):  # the second run's reset records every role's counters
            assert sequence.run(direct, "postfix").status == PASSED
        assert sequence.shared is not None
        relay, mx = (sequence.shared.topology.hosts[r] for r in ("relay", "mx"))
        before = _qmgr(relay), _qmgr(mx)
        assert sequence.run(direct, "postfix").status == PASSED
        after_quiet = _qmgr(relay), _qmgr(mx)
        # Not SMTP, not port 25: a connection attempt the relay refuses (its RST is TCP too).
        with socket.socket() as sock:
            sock.settimeout(5)
            assert sock.connect_ex((relay.address, 2525)) != 0
        assert sequence.run(direct, "postfix").status == PASSED
        after_knock = _qmgr(relay)
    finally:
        sequence.close()
    assert after_quiet[0] == before[0], "the relay saw no TCP: not reset"
    assert after_quiet[1] != before[1], "mx took the message: reset"
    assert after_knock != after_quiet[0], "a TCP segment on another port than 25 counts"


def test_only_the_roles_reset_have_their_neighbour_caches_emptied(
        run_context: RunContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """A role no TCP reached or left since its last reset learnt no neighbour since its cache was last
    emptied: the reset before the next scenario empties the caches of the roles it resets, and only those
    (a command in each MTA role's container, between every two scenarios)."""
    emptied: list[str] = []
    forget = HopCapture.forget_neighbours

    def recorded(capture: HopCapture) -> None:
        emptied.append(capture.host.role)
        forget(capture)

    monkeypatch.setattr(HopCapture, "forget_neighbours", recorded)
    direct = load_scenario(SCENARIOS / "01-direct-354.yaml")  # client -> mx only
    sequence = ScenarioSequence(run_context)
    try:
        rounds = []
        for _ in range(3):
            emptied.clear()
            assert sequence.run(direct, "postfix").status == PASSED
            rounds.append(sorted(emptied))
        assert sequence.shared is not None
        with socket.socket() as sock:  # TCP to the relay: it is reset, and its cache emptied, next time
            sock.settimeout(5)
            assert sock.connect_ex((sequence.shared.topology.address("relay"), 2525)) != 0
        emptied.clear()
        assert sequence.run(direct, "postfix").status == PASSED
        rounds.append(sorted(emptied))
    finally:
        sequence.close()
    # The first run's topology is new (nothing to empty); the second run resets every role (no counters
    # were recorded before); from then on only mx, which took the message, and the relay after the knock.
    assert rounds == [[], ["mx", "nomail", "relay"], ["mx"], ["mx", "relay"]], rounds


def test_an_opensmtpd_role_that_opened_no_connection_keeps_its_smtpd_and_one_that_did_is_restarted(
        run_context: RunContext) -> None:
    """OpenSMTPD's reset restarts smtpd to forget what it keeps about next hops (disabled routes, an idle
    session, reconnection delays), all of which come from a connection it opened. A role that opened none
    since its last reset, with nothing queued, keeps its smtpd and has its Maildirs emptied; one that
    opened any, on any port and whether or not it was answered, gets a new smtpd."""
    direct = load_scenario(SCENARIOS / "01-direct-354.yaml")  # client -> mx only
    relayed = load_scenario(SCENARIOS / "02-relay-354.yaml")  # client -> relay -> mx
    sequence = ScenarioSequence(run_context)

    def smtpd(host: Host) -> str:
        return host.shell.run(["cat", "/run/mta.pid"]).stdout.decode().strip()

    def delivered(host: Host) -> list[str]:
        return host.shell.run(["find", "/var/mail", "-type", "f", "-path", "*/new/*"]).stdout.decode().split()

    try:
        for _ in range(2):  # the second run's reset records every role's counters
            assert sequence.run(direct, "opensmtpd").status == PASSED
        assert sequence.shared is not None
        relay, mx = (sequence.shared.topology.hosts[r] for r in ("relay", "mx"))
        mx_before, relay_before = smtpd(mx), smtpd(relay)
        assert len(delivered(mx)) == 1
        assert sequence.run(direct, "opensmtpd").status == PASSED
        assert smtpd(mx) == mx_before, "mx only took mail in: its smtpd stays"
        assert len(delivered(mx)) == 1, "the last scenario's copy went with the reset"

        assert sequence.run(relayed, "opensmtpd").status == PASSED  # the relay opens a connection to mx
        assert sequence.run(direct, "opensmtpd").status == PASSED
        assert smtpd(relay) != relay_before, "the relay connected to mx: a new smtpd"
        assert smtpd(mx) == mx_before, "mx still only took mail in"

        # A connection mx opens itself (to a port nothing listens on: refused, still counted).
        opened = mx.shell.run(["bash", "-c", f"exec 3<>/dev/tcp/{relay.address}/2525"])
        assert opened.exit_code != 0
        assert sequence.run(direct, "opensmtpd").status == PASSED
        assert smtpd(mx) != mx_before, "mx opened a connection: a new smtpd"

        # The count is read again in the container, after its queue: one that moved since the harness
        # read it (a connection opened in between) restarts smtpd too.
        opens = int(mx.shell.run(["sh", "-c", ACTIVE_OPENS]).stdout)
        kept = smtpd(mx)
        OpenSmtpd().reset(HostCommands(mx), quiet_outbound=opens)
        assert smtpd(mx) == kept
        OpenSmtpd().reset(HostCommands(mx), quiet_outbound=opens - 1)
        assert smtpd(mx) != kept
    finally:
        sequence.close()
