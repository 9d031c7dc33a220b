"""Hops between hosts, as the roles' captures saw them: decoded on demand, so every call is current
while the scenario runs.

On a shared topology each role's capture runs from its container's start to its end, across scenarios;
a scenario sees only the connections opened since it began (``start_wall``), numbered from 1."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

from harness.observe.capture import HopCapture
from harness.observe.observations import ConnectionAttempt
from harness.observe.smtpstream import decode_connections
from harness.observe.tcpflows import Connection, GrowingCapture, NeighbourRequest, connections_of, merge_connections
from harness.smtp.transcript import Exchange, Transcript

# An ARP request that no port-25 traffic between the two hosts follows: the sender wanted to reach the
# target and never could put a SYN on the wire (nothing answered; the kernel then fails the connect with
# "No route to host"). Requests of one wish (the kernel asks again every 200 ms, see
# compose/capture/neighbour-table) are one attempt.
NO_SYN_NOTE = "asked for by ARP, no SYN followed (no answer: nothing there)"
_ONE_WISH_S = 2.0  # requests for one address closer than this are one attempt
_SYN_FOLLOWS_S = 3.0  # an answered request's SYN follows it well within this
_ACTIVE_BEFORE_S = 1.0  # a request about a connection that ended this recently is about that one (an ACK, a FIN)


def unanswered_requests(requests: Sequence[NeighbourRequest],
                        connections: Sequence[Connection]) -> list[tuple[str, str, float]]:
    """(sender, target, time of the first request) for each wish to reach ``target`` that no port-25
    connection between the two hosts went with: none started from just before it to shortly after its
    last request, and none was still going on then."""
    between: dict[frozenset[str], list[Connection]] = {}
    for conn in connections:
        between.setdefault(frozenset((conn.src, conn.dst)), []).append(conn)
    wishes: dict[tuple[str, str], list[list[float]]] = {}
    for request in requests:
        runs = wishes.setdefault((request.sender, request.target), [])
        if runs and request.ts - runs[-1][-1] < _ONE_WISH_S:
            runs[-1].append(request.ts)
        else:
            runs.append([request.ts])
    out = []
    for (sender, target), runs in wishes.items():
        pair = between.get(frozenset((sender, target)), [])
        for run in runs:
            first, last = run[0], run[-1]
            if not any(c.first_ts <= last + _SYN_FOLLOWS_S and c.last_ts >= first - _ACTIVE_BEFORE_S for c in pair):
                out.append((sender, target, first))
    return sorted(out, key=lambda w: w[2])


class _ParsedCaptures:
    """The captures' connections and ARP requests. Each capture file is read from where the last read
    ended and only its new packets are parsed (GrowingCapture); connections are rebuilt only for a file
    that grew. Waits look many times while nothing crosses the wire, and a shared topology's captures
    keep growing across its scenarios: reading and parsing them whole each time grew with every
    scenario the topology had run."""

    def __init__(self, captures: Mapping[str, HopCapture]) -> None:
        self._captures = captures
        self._lock = threading.Lock()
        # Per (capture, file: its earlier ones by index, then the current one): the file as parsed so
        # far and its connections. Keyed by the capture object itself: a replaced role's new capture
        # is another key, and the old one's entries go with it.
        self._files: dict[tuple[HopCapture, int], tuple[GrowingCapture, list[Connection]]] = {}
        self._connections: list[Connection] = []
        self._requests: list[NeighbourRequest] = []

    def connections(self) -> list[Connection]:
        return self.parsed()[0]

    def parsed(self) -> tuple[list[Connection], list[NeighbourRequest]]:
        with self._lock:
            changed = False
            present: list[tuple[HopCapture, int]] = []  # in the order the captures are merged
            for capture in list(self._captures.values()):
                earlier = list(capture.earlier)
                for index in range(len(earlier) + 1):
                    key = (capture, index)
                    present.append(key)
                    growing, connections = self._files.get(key) or (GrowingCapture(), [])
                    # A file kept from before a restart is complete: its rest is read from the copy.
                    data = (earlier[index][growing.offset:] if index < len(earlier)
                            else capture.read_pcap_from(growing.offset))
                    if growing.feed(data) or key not in self._files:
                        connections = connections_of(growing.segments)
                        changed = True
                    self._files[key] = (growing, connections)
            for key in set(self._files) - set(present):
                del self._files[key]
                changed = True
            if changed:
                files = [self._files[key] for key in present]
                self._connections = merge_connections([connections for _, connections in files])
                # A broadcast request is in every capture on the network: the same one several times.
                self._requests = sorted({r for growing, _ in files for r in growing.requests}, key=lambda r: r.ts)
            return list(self._connections), list(self._requests)


class CapturedHops:
    def __init__(self, captures: Mapping[str, HopCapture], names: Mapping[str, str], *, client_address: str,
                 start_wall: float, parsed: _ParsedCaptures | None = None) -> None:
        self._captures = captures
        self._parsed = parsed or _ParsedCaptures(captures)
        self._names = dict(names)
        self._client = client_address
        self._start_wall = start_wall

    def since(self, start_wall: float, names: Mapping[str, str] | None = None) -> CapturedHops:
        """The same captures, seen from ``start_wall`` on (the next scenario's window), with ``names``
        when the roles changed since (one added, moved or removed)."""
        return CapturedHops(self._captures, self._names if names is None else names, client_address=self._client,
                            start_wall=start_wall, parsed=self._parsed)

    def dropped(self) -> dict[str, int]:
        """The roles whose capture lost packets (its ring was full), with the most it lost: what their
        captures do not show may still have crossed the wire."""
        counts = {role: capture.dropped() for role, capture in self._captures.items()}
        return {role: n for role, n in counts.items() if n}

    def settle(self, role: str) -> None:
        """The role's container is about to end its processes (stop, kill, restart): what its capture
        lost so far is asked for now, while its tcpdump can still say."""
        if role in self._captures:
            self._captures[role].settle()

    def resume(self, role: str) -> None:
        """The role's container started again (a new network namespace): its capture follows it."""
        if role in self._captures:
            self._captures[role].resume()

    def rejoined(self, role: str) -> None:
        """The role's container reconnected to the network (a new interface in the same namespace): its
        neighbour table is tuned as at the start."""
        if role in self._captures:
            self._captures[role].tune_neighbours()

    def _connections(self) -> list[Connection]:
        return self._parsed.connections()

    def sessions(self) -> list[Transcript]:
        # Connections active in the window: an MTA may carry this scenario's message over a connection it
        # opened during an earlier one (OpenSMTPD keeps relay->mx sessions open); the message, not the
        # connection, is what a hop step matches, so an old connection's earlier transactions never do.
        connections = self._connections()
        # A SYN sent just before this read may still be answered: it counts as an attempt in progress.
        read_wall = time.time()
        active = [c for c in connections if c.last_ts >= self._start_wall]
        # The harness's own client sessions are recorded by the client itself, reply for reply.
        return decode_connections(active, names=self._names, start_wall=self._start_wall,
                                  exclude_sources=[self._client], read_wall=read_wall)

    def timeline(self) -> list[Exchange]:
        """The window's exchanges on every hop, for the scenario's report. A connection opened in an
        earlier scenario (an idle OpenSMTPD relay->mx session) shows only the transactions it carried in
        this window: its QUIT or an earlier scenario's delivery is not this scenario's traffic."""
        out: list[Exchange] = []
        for transcript in self.sessions():
            exchanges = transcript.exchanges
            if exchanges and exchanges[0].at_s < 0:
                first = next((i for i, e in enumerate(exchanges) if e.command == "MAIL" and e.at_s >= 0), None)
                exchanges = [] if first is None else exchanges[first:]
            out.extend(exchanges)
        return out

    def attempts(self) -> list[ConnectionAttempt]:
        connections, requests = self._parsed.parsed()
        out = []
        for conn in connections:
            # A connection attempt is an event of the window it started in.
            if conn.src == self._client or conn.first_ts < self._start_wall:
                continue
            out.append(ConnectionAttempt(
                source=self._names.get(conn.src, conn.src),
                destination=self._names.get(conn.dst, conn.dst),
                destination_address=conn.dst,
                port=conn.dport,
                at_s=conn.first_ts - self._start_wall,
            ))
        for sender, target, ts in unanswered_requests(requests, connections):
            if sender != self._client and ts >= self._start_wall:
                out.append(ConnectionAttempt(self._names.get(sender, sender), self._names.get(target, target), target,
                                             0, ts - self._start_wall, NO_SYN_NOTE))
        return sorted(out, key=lambda a: a.at_s)
