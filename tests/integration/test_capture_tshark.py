"""Hop captures in real role containers, and our decoder checked against Wireshark's SMTP dissector.

Mail goes client -> relay -> mx, captured in the relay's and the mx's containers. The relay -> mx hop our
decoder reads from a capture must be, reply for reply (command and code), what tshark shows for the same
file, read by tshark in a container of the capture image (compose/capture)."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from harness.observe.capture import CAPTURE_IMAGE, HopCapture, start_captures
from harness.observe.smtpstream import connections, decode_sessions
from harness.plan import plan_scenario
from harness.runner import RunContext, bring_up
from harness.smtp.transcript import Transcript
from harness.topology.labels import ROLE_LABEL, RUN_LABEL, new_run_id, run_labels
from harness.topology.topology import CAPTURE_PID, Topology, fresh_archive
from harness.verify import CAPTURE_LAG_S

from .conftest import COMPOSE

WAIT_S = 30.0
LISTENING_BOUND_S = 10.0
RECIPIENTS = ["bob@example.test", "carol@example.test"]


@dataclass
class Setup:
    topology: Topology
    captures: dict[str, HopCapture]
    names: dict[str, str]
    start_wall: float
    tshark_image: str


@pytest.fixture(scope="module")
def setup(run_context: RunContext, engine: docker.DockerClient) -> Iterator[Setup]:
    run_id = new_run_id()
    image = run_context.images.image(CAPTURE_IMAGE)
    topology = bring_up(run_context, plan_scenario(None, COMPOSE), run_id=run_id, keep_label=False)
    try:
        captures = start_captures([topology.hosts["relay"], topology.hosts["mx"]])
        names = {h.address: h.role for h in topology.hosts.values()}
        names[topology.gateway] = "client"
        yield Setup(topology, captures, names, time.time(), image)
    finally:
        topology.destroy()
        left = engine.containers.list(all=True, sparse=True, filters={"label": f"{RUN_LABEL}={run_id}"})
        assert not left, f"left behind: {[c.name for c in left]}"


def _send_through_relay(setup: Setup) -> None:
    with smtplib.SMTP(setup.topology.address("relay"), 25, local_hostname="client.origin.test", timeout=10) as smtp:
        smtp.sendmail("alice@origin.test", RECIPIENTS,
                      b"Subject: captured\r\nMessage-ID: <captured-1@origin.test>\r\n\r\nhello\r\n")


def _relay_to_mx(setup: Setup, pcaps: list[bytes]) -> list[Transcript]:
    sessions = decode_sessions(pcaps, names=setup.names, start_wall=setup.start_wall,
                               exclude_sources=[setup.topology.gateway])
    return [t for t in sessions if t.hop == "relay->mx"]


def _wait_for_hop(setup: Setup) -> Transcript:
    """The relay -> mx session once its QUIT is answered (the relay delivers asynchronously)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        hops = _relay_to_mx(setup, [setup.captures["mx"].read_pcap()])
        done = [t for t in hops if (q := t.first("QUIT")) is not None and q.code is not None]
        if done:
            return done[0]
        if time.monotonic() > deadline:
            pytest.fail(f"no complete relay->mx session within {WAIT_S} s; decoded: {hops}\n"
                        f"relay log:\n{setup.topology.hosts['relay'].logs()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def relayed(setup: Setup) -> Transcript:
    _send_through_relay(setup)
    return _wait_for_hop(setup)


def test_captures_listen_in_the_roles_own_containers_before_their_mtas_greet(
        setup: Setup, engine: docker.DockerClient) -> None:
    run = engine.containers.list(all=True, filters={"label": f"{RUN_LABEL}={setup.topology.run_id}"})
    assert sorted(c.labels[ROLE_LABEL] for c in run) == sorted(setup.topology.hosts)  # no container beside them
    for role, capture in setup.captures.items():
        # The entrypoint starts the MTA only once tcpdump listens: by its greeting, it does.
        assert capture.listening_after_s is not None and capture.listening_after_s < LISTENING_BOUND_S
        host = setup.topology.hosts[role]
        pid = host.shell.run(["cat", CAPTURE_PID]).stdout.decode().strip()
        assert host.shell.run(["cat", f"/proc/{pid}/comm"]).stdout == b"tcpdump\n", role
        # The MTA's container: its own address, on its one network.
        nets = engine.containers.get(host.container_id).attrs["NetworkSettings"]["Networks"]
        assert [n["IPAddress"] for n in nets.values()] == [host.address]


def test_decoded_hop(relayed: Transcript) -> None:
    assert [(e.command, e.code) for e in relayed.exchanges] == [
        ("CONNECT", 220), ("EHLO", 250), ("MAIL", 250), ("RCPT", 250), ("RCPT", 250), ("DATA", 354),
        ("END-OF-DATA", 250), ("QUIT", 221)]
    assert relayed.session == 1


def test_both_captures_hold_the_hop_and_merge_to_one(setup: Setup, relayed: Transcript) -> None:
    relay_pcap, mx_pcap = setup.captures["relay"].read_pcap(), setup.captures["mx"].read_pcap()
    from_relay = _relay_to_mx(setup, [relay_pcap])
    merged = _relay_to_mx(setup, [relay_pcap, mx_pcap])
    assert len(from_relay) == len(merged) == 1
    assert [(e.command, e.code, e.text) for e in from_relay[0].exchanges] == \
           [(e.command, e.code, e.text) for e in relayed.exchanges]
    relay = setup.topology.address("relay")
    assert any(c.src == relay and c.dst == setup.topology.address("mx") for c in connections(mx_pcap))


TSHARK_FIELDS = ("frame.number", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "smtp.req.command",
                 "smtp.response.code", "smtp.eom")


def _tshark(setup: Setup, pcap: bytes, *args: str) -> str:
    """``tshark -r <pcap> <args>``'s standard output, run in a container of the capture image."""
    engine = setup.topology.client
    container = engine.containers.create(setup.tshark_image, ["tshark", "-r", "/tmp/hop.pcap", *args],
                                         network_mode="none", labels=run_labels(setup.topology.run_id))
    try:
        container.put_archive("/tmp", fresh_archive([("hop.pcap", pcap, 0o644)]))
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()
        return bytes(container.logs(stdout=True, stderr=False)).decode()
    finally:
        container.remove(force=True)


def _tshark_hop(setup: Setup, capture: HopCapture, client: str, server: str) -> list[tuple[str | None, int]]:
    """(command, code) per reply of the client -> server hop as Wireshark's SMTP dissector sees it.

    The dissector lists the commands of a client segment (several when pipelined), marks the final
    dot (smtp.eom) and lists the reply codes of a server segment. Replies pair with commands in order,
    the first with the greeting. A command it does not show pairs as None: Wireshark 4.0 does not
    dissect commands that follow the final dot in the same segment (Postfix pipelines its QUIT there).
    """
    fields = [arg for f in TSHARK_FIELDS for arg in ("-e", f)]
    out = _tshark(setup, capture.read_pcap(), "-Y", f"smtp && ip.addr == {client} && ip.addr == {server}",
                  "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|", *fields)
    requests: list[str] = []
    codes: list[int] = []
    for line in out.splitlines():
        _, src, _sport, dst, _dport, commands, replies, eom = line.split("\t")
        if src == client and dst == server:
            requests.extend(c.upper() for c in commands.split("|") if c)
            if eom:
                requests.append("END-OF-DATA")
        elif src == server and dst == client:
            codes.extend(int(c) for c in replies.split("|") if c)
    paired: list[tuple[str | None, int]] = []
    for i, code in enumerate(codes):
        if i == 0:
            paired.append(("CONNECT", code))
        else:
            paired.append((requests[i - 1] if i - 1 < len(requests) else None, code))
    return paired


@pytest.mark.parametrize("role", ["mx", "relay"])
def test_decoder_matches_tshark_reply_for_reply(setup: Setup, relayed: Transcript, role: str) -> None:
    capture = setup.captures[role]
    ours = _relay_to_mx(setup, [capture.read_pcap()])
    assert len(ours) == 1
    decoded = [(e.command, e.code) for e in ours[0].exchanges]
    wireshark = _tshark_hop(setup, capture, setup.topology.address("relay"), setup.topology.address("mx"))
    assert [code for _, code in decoded] == [code for _, code in wireshark]
    for i, ((command, _), (seen, _)) in enumerate(zip(decoded, wireshark, strict=True)):
        if seen is None:
            # Only what Wireshark cannot show: a command pipelined after the final dot.
            assert decoded[i - 1][0] == "END-OF-DATA", (decoded, wireshark)
        else:
            assert command == seen, (decoded, wireshark)
    assert sum(1 for seen, _ in wireshark if seen is None) <= 1


def test_capture_file_is_readable_while_running_and_grows(setup: Setup, relayed: Transcript) -> None:
    before = setup.captures["mx"].read_pcap()
    _send_through_relay(setup)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        hops = _relay_to_mx(setup, [setup.captures["mx"].read_pcap()])
        if len(hops) == 2 and (q := hops[1].first("QUIT")) is not None and q.code is not None:
            break
        time.sleep(0.2)
    after = setup.captures["mx"].read_pcap()
    assert after.startswith(before) and len(after) > len(before)
    assert [(t.hop, t.session) for t in _relay_to_mx(setup, [after])] == [("relay->mx", 1), ("relay->mx", 2)]


def test_a_session_is_in_the_capture_file_long_before_the_lag_a_verdict_allows_for(setup: Setup) -> None:
    # "No connection" is said CAPTURE_LAG_S after the last look (StepRunner.no_connection): the capture
    # must trail the wire by much less. tcpdump without --immediate-mode took 380-500 ms here.
    mx = setup.captures["mx"]

    def quits() -> int:
        sessions = decode_sessions([mx.read_pcap()], names=setup.names, start_wall=setup.start_wall)
        return sum(1 for t in sessions if t.hop == "client->mx" and (q := t.first("QUIT")) is not None
                   and q.code == 221)

    before = quits()
    with socket.create_connection((setup.topology.address("mx"), 25), timeout=10) as conn:
        conn.recv(512)
        conn.sendall(b"QUIT\r\n")
        conn.recv(512)
    closed = time.monotonic()
    while quits() == before:
        assert time.monotonic() - closed < CAPTURE_LAG_S / 2, "the session is not in the capture file yet"
        time.sleep(0.01)


def test_tcpdump_says_how_many_packets_its_ring_lost(setup: Setup, relayed: Transcript) -> None:
    # What a "no connection" verdict relies on: tcpdump's own statistics, asked for as its own user.
    for capture in setup.captures.values():
        assert capture.dropped() == 0
        assert "packets received by filter" in capture.logs()
