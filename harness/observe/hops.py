"""Hops between hosts, as the capture companions saw them: decoded on demand, so every call is
current while the scenario runs.

On a shared topology the companions capture from the topology's start to its end, across scenarios;
a scenario sees only the connections opened since it began (``start_wall``), numbered from 1."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from harness.observe.capture import HopCapture
from harness.observe.observations import ConnectionAttempt
from harness.observe.smtpstream import decode_connections, merge_captures
from harness.observe.tcpflows import Connection
from harness.smtp.transcript import Exchange, Transcript


class _ParsedCaptures:
    """The captures' connections, parsed again only when a capture grew: waits look many times while
    nothing crosses the wire, and a shared topology's captures keep growing across scenarios."""

    def __init__(self, captures: Mapping[str, HopCapture]) -> None:
        self._captures = captures
        self._lock = threading.Lock()
        self._sizes: tuple[int, ...] | None = None
        self._connections: list[Connection] = []

    def connections(self) -> list[Connection]:
        data = [pcap for c in self._captures.values() for pcap in c.read_pcaps()]
        sizes = tuple(len(d) for d in data)
        with self._lock:
            if sizes != self._sizes:
                self._connections, self._sizes = merge_captures(data), sizes
            return list(self._connections)


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
        out = []
        for conn in self._connections():
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
        return out
