"""Regenerate tests/unit/fixtures/pcap/: real captures of real sessions, for the decoder's unit tests.

    .venv/bin/python tests/fixtures_tools/make_pcap_fixtures.py [--out DIR]

Starts the standard topology (its own run id; everything is removed at the end, also on errors),
then for each case notes where each role's capture file ends, drives traffic, waits until the capture
shows the case complete, and writes ``<case>.<role>.pcap`` (the file's header and what the case added).
``manifest.json`` records what the tests need besides the pcaps: address -> role of this run (the subnet
differs per run), each case's start time and files, and how long each capture took to be seen listening.
Needs a Docker engine and the images.

The unit tests assert exact sequences: after regenerating, run them; a changed Postfix version may
legitimately change texts (queue ids are never asserted).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import docker
from docker.errors import DockerException
from docker.types import EndpointConfig

from harness.observe.capture import HopCapture, start_captures
from harness.observe.smtpstream import connections, decode_sessions
from harness.plan import plan_scenario
from harness.report.progress import Progress
from harness.runner import RunContext, bring_up
from harness.smtp.transcript import Transcript
from harness.topology.engine import ensure_engine
from harness.topology.images import ImageStore
from harness.topology.labels import RUN_LABEL, new_run_id, run_labels
from harness.topology.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
DEFAULT_OUT = ROOT / "tests" / "unit" / "fixtures" / "pcap"
WAIT_S = 30.0
PCAP_HEADER = 24  # a pcap file's global header
# Any unused host number of the run's /24 (roles use .2-.12): a host that vanishes in the syn_only case.
VANISHING_HOST_OFFSET = 30


class RaceLostError(RuntimeError):
    """The server answered before the client's reset: the capture does not show the case."""


class Fixtures:
    def __init__(self, topology: Topology, base_image: str, out: Path) -> None:
        self.topology = topology
        self.base_image = base_image
        self.out = out
        self.since: dict[str, int] = {}  # per role: where the current case's part of its capture begins
        self.labels = run_labels(topology.run_id)
        self.names = {h.address: h.role for h in topology.hosts.values()}
        self.names[topology.gateway] = "client"
        self.manifest: dict[str, object] = {
            "run_id": topology.run_id, "names": self.names, "gateway": topology.gateway, "cases": {}}

    def addr(self, role: str) -> str:
        return self.topology.address(role)

    # -- helpers ----------------------------------------------------------------------------------
    def case(self, name: str, roles: Sequence[str], drive: Callable[[], None],
             done: Callable[[list[Transcript]], bool]) -> None:
        captures = start_captures([self.topology.hosts[r] for r in roles])
        # A role's capture runs from its container's start on: this case's file is the header and what
        # was written after this point.
        self.since = {role: len(c.read_pcap()) for role, c in captures.items()}
        start_wall = time.time()
        drive()
        pcaps = self.wait(captures, done)
        files = {}
        for role, data in pcaps.items():
            path = self.out / f"{name}.{role}.pcap"
            path.write_bytes(data)
            files[role] = path.name
        cases = self.manifest["cases"]
        assert isinstance(cases, dict)
        cases[name] = {"start_wall": start_wall, "files": files,
                       "listening_after_s": {r: round(c.listening_after_s or 0.0, 3)
                                             for r, c in captures.items()}}
        print(f"{name}: {', '.join(f'{f} ({len(pcaps[r])} bytes)' for r, f in files.items())}; "
              f"listening after {cases[name]['listening_after_s']}")

    def _case_pcap(self, role: str, capture: HopCapture) -> bytes:
        data = capture.read_pcap()
        return data[:PCAP_HEADER] + data[max(PCAP_HEADER, self.since[role]):]

    def wait(self, captures: dict[str, HopCapture], done: Callable[[list[Transcript]], bool]
             ) -> dict[str, bytes]:
        deadline = time.monotonic() + WAIT_S
        while True:
            pcaps = {role: self._case_pcap(role, c) for role, c in captures.items()}
            sessions = decode_sessions(list(pcaps.values()), names=self.names, start_wall=0.0)
            if done(sessions):
                # Let the last ACKs/FINs land: the fixtures should show connections ending.
                time.sleep(0.5)
                return {role: self._case_pcap(role, c) for role, c in captures.items()}
            if time.monotonic() > deadline:
                shown = "\n".join(f"{e.hop} {e.session} {e.command} {e.code}" for t in sessions for e in t.exchanges)
                raise RuntimeError(f"case did not complete within {WAIT_S} s; decoded so far:\n{shown}")
            time.sleep(0.2)

    def connect(self, role: str) -> socket.socket:
        sock = socket.create_connection((self.addr(role), 25), timeout=10)
        # Every write its own segment: the split cases depend on it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    @staticmethod
    def reply(sock: socket.socket) -> bytes:
        """Read one whole reply (continuation lines included)."""
        buf = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return buf
            buf += chunk
            lines = buf.split(b"\r\n")
            if len(lines) > 1 and any(len(line) >= 4 and line[3:4] == b" " for line in lines[:-1]):
                return buf

    def exec_in(self, role: str, script: str) -> None:
        """Run ``script`` with bash in a role's container (its network namespace)."""
        container = self.topology.hosts[role].container.get_wrapped_container()
        container.exec_run(["bash", "-c", script])

    # -- cases ----------------------------------------------------------------------------------------
    def relay_mx_pipelined(self) -> None:
        """client -> relay (the harness's side, from the gateway) and relay -> mx (Postfix pipelining)."""

        def drive() -> None:
            sock = self.connect("relay")
            self.reply(sock)
            for line in (b"EHLO client.origin.test", b"MAIL FROM:<alice@origin.test>", b"RCPT TO:<bob@example.test>",
                         b"RCPT TO:<carol@example.test>", b"DATA"):
                sock.sendall(line + b"\r\n")
                self.reply(sock)
            sock.sendall(b"Subject: pipelined\r\nMessage-ID: <fixture-1@origin.test>\r\n\r\nhello\r\n.\r\n")
            self.reply(sock)
            sock.sendall(b"QUIT\r\n")
            self.reply(sock)
            sock.close()

        self.case("relay_mx_pipelined", ["relay", "mx"], drive,
                  lambda ts: any(t.hop == "relay->mx" and t.first("QUIT") is not None
                                 and t.first("QUIT").code is not None  # type: ignore[union-attr]
                                 for t in ts))

    def split_segments(self) -> None:
        """client -> mx with commands and the final dot split across segments; multi-line EHLO reply."""

        def drive() -> None:
            sock = self.connect("mx")
            self.reply(sock)
            sock.sendall(b"EHLO cl")
            time.sleep(0.2)  # a separate segment, not coalesced with the rest
            sock.sendall(b"ient.origin.test\r\n")
            self.reply(sock)
            for line in (b"MAIL FROM:<alice@origin.test>", b"RCPT TO:<bob@example.test>", b"DATA"):
                sock.sendall(line + b"\r\n")
                self.reply(sock)
            # Lines that look like commands are message text here; ".." is a dot-stuffed line.
            sock.sendall(b"Subject: split\r\n\r\nQUIT\r\nRSET\r\n..leading dot\r\n")
            time.sleep(0.2)
            sock.sendall(b".")  # the final dot alone, then its CRLF in the next segment
            time.sleep(0.2)
            sock.sendall(b"\r\n")
            self.reply(sock)
            sock.sendall(b"NOOP\r\n")
            self.reply(sock)
            sock.sendall(b"QUIT\r\n")
            self.reply(sock)
            sock.close()

        self.case("split_segments", ["mx"], drive,
                  lambda ts: any(t.first("QUIT") is not None for t in ts))

    def bdat(self) -> None:
        """client -> mx with CHUNKING: two BDAT chunks whose bytes look like commands."""

        def drive() -> None:
            sock = self.connect("mx")
            self.reply(sock)
            for line in (b"EHLO client.origin.test", b"MAIL FROM:<alice@origin.test>", b"RCPT TO:<bob@example.test>"):
                sock.sendall(line + b"\r\n")
                self.reply(sock)
            first = b"Subject: chunked\r\n\r\nRSET\r\n"
            sock.sendall(b"BDAT %d\r\n" % len(first) + first)
            self.reply(sock)
            last = b"QUIT\r\n.\r\n"
            sock.sendall(b"BDAT %d LAST\r\n" % len(last))
            time.sleep(0.2)  # the chunk in its own segment
            sock.sendall(last)
            self.reply(sock)
            sock.sendall(b"QUIT\r\n")
            self.reply(sock)
            sock.close()

        self.case("bdat", ["mx"], drive, lambda ts: any(t.first("QUIT") is not None for t in ts))

    def nomail_521(self) -> None:
        """client -> nomail: 521 greeting, then nomail closes; relay -> nomail the same (MX of sendonly.test)."""

        def drive() -> None:
            sock = self.connect("nomail")
            self.reply(sock)
            time.sleep(0.2)
            sock.close()
            sock = self.connect("relay")
            self.reply(sock)
            for line in (b"EHLO client.origin.test", b"MAIL FROM:<alice@origin.test>",
                         b"RCPT TO:<someone@sendonly.test>", b"DATA"):
                sock.sendall(line + b"\r\n")
                self.reply(sock)
            sock.sendall(b"Subject: to a host that takes no mail\r\n\r\nhello\r\n.\r\n")
            self.reply(sock)
            sock.sendall(b"QUIT\r\n")
            self.reply(sock)
            sock.close()

        self.case("nomail_521", ["relay", "nomail"], drive,
                  lambda ts: any(t.hop == "relay->nomail" for t in ts) and any(t.hop == "client->nomail" for t in ts))

    def reset(self) -> None:
        """client -> mx: MAIL sent, then the client resets the connection before any reply (SO_LINGER 0)."""

        def drive() -> None:
            sock = self.connect("mx")
            self.reply(sock)
            sock.sendall(b"EHLO client.origin.test\r\n")
            self.reply(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(b"MAIL FROM:<alice@origin.test>\r\n")
            sock.close()  # RST right behind the command: smtpd has not answered yet

        def done(ts: list[Transcript]) -> bool:
            mail = next((t.first("MAIL") for t in ts if t.first("MAIL") is not None), None)
            if mail is None:
                return False
            if mail.code is not None:
                raise RaceLostError("mx answered MAIL before the reset arrived")
            return True

        # The RST leaves microseconds after the command; smtpd usually has not answered by then, but
        # now and then it has. Such a capture shows no reset case: capture again.
        for attempt in range(1, 6):
            try:
                self.case("reset", ["mx"], drive, done)
                return
            except RaceLostError as exc:
                print(f"reset: attempt {attempt}: {exc}; again")
        raise RuntimeError("reset: mx answered before the reset in 5 attempts")

    def refused_and_syn_only(self) -> None:
        """Attempts from relay's namespace: to dns:25 (RST: refused) and to a host that vanished (SYN only).

        A SYN to an address nobody has is never sent (ARP fails first), so nothing would be captured;
        a host that answered ARP and then went away leaves a neighbour entry behind, and the SYN (and
        its retransmission) go out to no one.
        """
        subnet = self.topology.subnet
        vanishing = str(subnet.network_address + VANISHING_HOST_OFFSET)
        client = docker.from_env()
        labels = {**self.labels, "mailflow-harness.role": "vanishing"}

        def drive() -> None:
            network = self.topology.network_name
            ghost = client.containers.run(
                self.base_image, ["sleep", "300"], detach=True, labels=labels,
                name=f"mailflow-{self.topology.run_id}-vanishing", network=network,
                networking_config={network: EndpointConfig("1.41", ipv4_address=vanishing)})
            try:
                self.exec_in("relay", f"exec 3<>/dev/tcp/{self.addr('dns')}/25")  # refused
                self.exec_in("relay", f"exec 3<>/dev/tcp/{vanishing}/25")  # refused too; the neighbour is learnt
            finally:
                ghost.remove(force=True)
            # Nothing answers now; the first SYN leaves at once, its retransmission after ~1 s.
            self.exec_in("relay", f"timeout 2 bash -c 'exec 3<>/dev/tcp/{vanishing}/25'")

        def done(ts: list[Transcript]) -> bool:
            return sum(1 for t in ts if t.hop.startswith("relay->")) >= 3

        self.case("refused_and_syn_only", ["relay"], drive, done)
        conns = connections((self.out / "refused_and_syn_only.relay.pcap").read_bytes())
        if not any(c.syn_only for c in conns):
            raise RuntimeError("no SYN-only attempt was captured (the neighbour entry was gone?)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    client = ensure_engine(progress, may_start=False)
    ctx = RunContext(client, ImageStore(client, progress, COMPOSE), COMPOSE, progress)
    topology = bring_up(ctx, plan_scenario(None, COMPOSE), run_id=new_run_id(), keep_label=False)
    try:
        fixtures = Fixtures(topology, ctx.images.base_image(), out)
        for old in out.glob("*.pcap"):
            old.unlink()
        # refused_and_syn_only before nomail_521: the relay retries the mail nomail refused (a queue
        # run every 5 s), and that retry would land in the relay's later captures.
        fixtures.refused_and_syn_only()
        fixtures.relay_mx_pipelined()
        fixtures.split_segments()
        fixtures.bdat()
        fixtures.reset()
        fixtures.nomail_521()
        (out / "manifest.json").write_text(json.dumps(fixtures.manifest, indent=2, sort_keys=True) + "\n")
    finally:
        try:
            topology.destroy()
        except DockerException as exc:  # pragma: no cover - reported, the label still finds them
            print(f"cleanup failed: {exc}; remove with `harness down --run {topology.run_id}`", file=sys.stderr)
    left = client.containers.list(all=True, sparse=True, filters={"label": f"{RUN_LABEL}={topology.run_id}"})
    if left:
        print(f"left behind: {[c.name for c in left]}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

