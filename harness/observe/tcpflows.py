"""TCP connections out of a packet capture: pcap parsing with dpkt, reassembly done here (pure, no I/O).

dpkt only reads the file and the headers; it keeps no per-connection state. Reassembly is ours so the
rules are explicit and testable: per connection and direction, bytes are ordered by sequence number,
bytes already delivered (retransmissions, the same packet seen twice on ``-i any``) are dropped, bytes
after a hole wait until the hole is filled, and nothing after an RST counts (the peer discarded the
connection, so bytes still in flight never reached an application).
"""

from __future__ import annotations

import bisect
import io
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import dpkt  # type: ignore[import-untyped]  # dpkt ships no type information

__all__ = ["Chunk", "Connection", "GrowingCapture", "NeighbourRequest", "PcapError", "Segment", "Stream",
           "connections_of", "merge_connections", "read_capture", "read_connections", "read_segments"]

_SEQ_MOD = 1 << 32
_HALF = 1 << 31
# Linux "cooked" captures (tcpdump -i any): v1 before libpcap 1.10, v2 since (Debian bookworm).
_DLT_EN10MB = 1
_DLT_RAW = (12, 14, 101)  # the number differs between platforms; 101 is LINKTYPE_RAW in files
_DLT_LINUX_SLL = 113
_DLT_LINUX_SLL2 = 276
_DLT_NULL = (0, 108)  # BSD loopback: 4-byte address family, then IP

SMTP_PORT = 25


class PcapError(ValueError):
    """The bytes are not a capture file this module can read."""


@dataclass(frozen=True)
class Segment:
    """One captured TCP segment."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    flags: int
    payload: bytes
    truncated: bool = False  # the capture holds fewer payload bytes than the IP header announced

    @property
    def syn(self) -> bool:
        return bool(self.flags & dpkt.tcp.TH_SYN)

    @property
    def ack_flag(self) -> bool:
        return bool(self.flags & dpkt.tcp.TH_ACK)

    @property
    def fin(self) -> bool:
        return bool(self.flags & dpkt.tcp.TH_FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & dpkt.tcp.TH_RST)


@dataclass(frozen=True)
class Chunk:
    """Bytes of one direction that became contiguous (readable in order) at capture time ``ts``."""

    ts: float
    data: bytes


@dataclass(frozen=True)
class Stream:
    """One direction of a connection, reassembled."""

    chunks: tuple[Chunk, ...] = ()
    fin_ts: float | None = None  # this side sent FIN (and every byte before it was captured)
    gap: bool = False  # bytes are missing from the capture: the stream stops before the hole

    @cached_property
    def data(self) -> bytes:
        return b"".join(c.data for c in self.chunks)

    @cached_property
    def _ends(self) -> list[int]:
        ends: list[int] = []
        total = 0
        for chunk in self.chunks:
            total += len(chunk.data)
            ends.append(total)
        return ends

    def ts_at(self, offset: int) -> float:
        """Capture time of the byte at ``offset`` (when it became readable in order)."""
        index = bisect.bisect_right(self._ends, offset)
        return self.chunks[min(index, len(self.chunks) - 1)].ts


@dataclass(frozen=True)
class Connection:
    """A TCP connection (or an attempt at one). ``src``/``sport`` is the side that sent the first SYN.

    ``syn_only``: SYNs went out and nothing came back (no host answered; SYN retransmissions count as
    one attempt). ``refused``: the SYN was answered by RST (nothing listening on the port).
    ``end``: "rst" (either side reset), "fin" (a side closed), "open" (still open when the capture was
    read). ``isn`` is None when the capture missed the SYN (it started after the connection opened);
    the client side is then guessed from the port (the side not on port 25).
    """

    src: str
    sport: int
    dst: str
    dport: int
    first_ts: float
    last_ts: float
    isn: int | None
    syn_only: bool
    refused: bool
    established: bool
    end: str
    end_ts: float | None
    client: Stream
    server: Stream
    packets: int

    def key(self) -> tuple[str, int, str, int, int | None]:
        return (self.src, self.sport, self.dst, self.dport, self.isn)

    @property
    def payload_bytes(self) -> int:
        return sum(len(c.data) for c in self.client.chunks) + sum(len(c.data) for c in self.server.chunks)


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _link_payload(linktype: int, frame: bytes) -> object | None:
    """What a frame carries (an IP/IPv6 packet, an ARP message, ...), or None when it cannot be read."""
    try:
        if linktype == _DLT_LINUX_SLL2:
            link = dpkt.sll2.SLL2(frame)
        elif linktype == _DLT_LINUX_SLL:
            link = dpkt.sll.SLL(frame)
        elif linktype == _DLT_EN10MB:
            link = dpkt.ethernet.Ethernet(frame)
        elif linktype in _DLT_RAW:
            version = frame[0] >> 4 if frame else 0
            return dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame) if version == 6 else None
        elif linktype in _DLT_NULL:
            link = dpkt.loopback.Loopback(frame)
        else:
            raise PcapError(f"unsupported link type {linktype} (expected Ethernet, Linux cooked or raw IP)")
    except (dpkt.UnpackError, IndexError):
        return None
    inner: object = link.data
    return inner


@dataclass(frozen=True)
class NeighbourRequest:
    """An ARP request: ``sender`` asked which link address ``target`` has, as a host does before it sends
    ``target`` its first packet (a SYN, say) when its neighbour table has no entry for it."""

    ts: float
    sender: str
    target: str


def _neighbour_request(ts: float, payload: object) -> NeighbourRequest | None:
    if not isinstance(payload, dpkt.arp.ARP) or payload.op != dpkt.arp.ARP_OP_REQUEST:
        return None
    if len(payload.spa) != 4 or len(payload.tpa) != 4 or payload.spa == b"\0\0\0\0":
        return None  # not IPv4, or an address conflict probe (RFC 5227) rather than a wish to send
    return NeighbourRequest(ts, _address(payload.spa), _address(payload.tpa))


def _segment(ts: float, packet: object) -> Segment | None:
    if isinstance(packet, dpkt.ip.IP):
        if packet.p != dpkt.ip.IP_PROTO_TCP or packet.offset:  # a non-first fragment carries no TCP header
            return None
        ip_payload_len = packet.len - packet.hl * 4
    elif isinstance(packet, dpkt.ip6.IP6):
        if packet.nxt != dpkt.ip.IP_PROTO_TCP:
            return None
        ip_payload_len = packet.plen
    else:
        return None
    tcp = packet.data
    if not isinstance(tcp, dpkt.tcp.TCP):
        return None
    payload = bytes(tcp.data)
    # A short snaplen, or the last record of a file still being written, can cut a packet: compare
    # with what the IP header announced instead of trusting the captured length.
    expected = ip_payload_len - tcp.off * 4
    # With TSO/GRO the kernel may hand tcpdump a "super-packet" whose IP length field is 0.
    truncated = ip_payload_len > 0 and len(payload) < expected
    # dpkt slices a cut header without complaint: options shorter than the data offset says.
    truncated = truncated or len(tcp.opts) < tcp.off * 4 - tcp.__hdr_len__
    return Segment(ts, _address(packet.src), tcp.sport, _address(packet.dst), tcp.dport, tcp.seq, tcp.flags,
                   payload, truncated)


def read_segments(pcap: bytes) -> list[Segment]:
    """Every TCP segment of a pcap (or pcapng) file, in capture-time order (stable)."""
    return read_capture(pcap)[0]


def read_capture(pcap: bytes) -> tuple[list[Segment], list[NeighbourRequest]]:
    """Every TCP segment and every ARP request of a pcap (or pcapng) file, each in capture-time order."""
    try:
        reader = dpkt.pcap.UniversalReader(io.BytesIO(pcap))
    except (ValueError, dpkt.UnpackError) as exc:
        raise PcapError(f"not a pcap/pcapng file: {exc}") from exc
    linktype = int(reader.datalink())
    segments: list[Segment] = []
    requests: list[NeighbourRequest] = []
    records = iter(reader)
    while True:
        try:
            ts, frame = next(records)
        except StopIteration:
            break
        except (dpkt.UnpackError, ValueError):
            # The last record of a file read while tcpdump is still writing may be cut short.
            break
        _read_frame(linktype, float(ts), bytes(frame), segments, requests)
    # tcpdump -i any writes packets as the CPUs hand them over: order by time, keep file order on ties.
    segments.sort(key=lambda s: s.ts)
    requests.sort(key=lambda r: r.ts)
    return segments, requests


def _read_frame(linktype: int, ts: float, frame: bytes, segments: list[Segment],
                requests: list[NeighbourRequest]) -> None:
    """The frame's TCP segment onto ``segments``, or its ARP request onto ``requests``; else nothing."""
    payload = _link_payload(linktype, frame)
    if not isinstance(payload, dpkt.ip.IP | dpkt.ip6.IP6):
        request = _neighbour_request(ts, payload)
        if request is not None:
            requests.append(request)
        return
    try:
        segment = _segment(ts, payload)
    except (dpkt.UnpackError, ValueError):
        return
    if segment is not None:
        segments.append(segment)


# Classic pcap (what tcpdump -w writes): a 24-byte file header, then per packet a 16-byte record header
# (seconds, fraction, captured length, original length) and the captured bytes.
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e6), b"\xa1\xb2\xc3\xd4": (">", 1e6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e9), b"\xa1\xb2\x3c\x4d": (">", 1e9)}
_PCAP_HEADER = 24
_RECORD_HEADER = 16


class GrowingCapture:
    """A capture file read while tcpdump still appends to it: ``feed`` takes the file's bytes from
    ``offset`` on and parses only whole records, so each packet is parsed once however often the file
    is read; a record not yet written in full is read again, whole, by the next ``feed``. A file that is
    not classic pcap (pcapng) is parsed whole on every feed instead. Segments and requests are in
    capture-time order (file order on ties), as ``read_capture`` gives them."""

    def __init__(self) -> None:
        self.offset = 0  # bytes of the file parsed so far
        self.segments: list[Segment] = []
        self.requests: list[NeighbourRequest] = []
        self._format: tuple[str, float, int] | None = None  # byte order, fraction per second, link type
        self._whole: bytes | None = None  # not classic pcap: everything so far, parsed as one

    def feed(self, data: bytes) -> bool:
        """Parse ``data``, the file's bytes from ``offset`` on; whether any new packet was read."""
        if self._whole is not None:
            return self._feed_whole(data)
        view = memoryview(data)
        pos = 0
        if self._format is None:
            if len(data) < _PCAP_HEADER:
                return False  # tcpdump has not written its file header yet
            magic = bytes(view[:4])
            if magic not in _PCAP_MAGIC:
                self._whole = b""
                return self._feed_whole(data)
            order, fraction = _PCAP_MAGIC[magic]
            linktype = int.from_bytes(view[20:24], "little" if order == "<" else "big") & 0x0FFFFFFF
            self._format = (order, fraction, linktype)
            pos = _PCAP_HEADER
        order, fraction, linktype = self._format
        header = struct.Struct(order + "IIII")
        before = (len(self.segments), len(self.requests))
        while len(data) - pos >= _RECORD_HEADER:
            seconds, part, captured, _ = header.unpack_from(view, pos)
            end = pos + _RECORD_HEADER + captured
            if end > len(data):
                break
            _read_frame(linktype, seconds + part / fraction, bytes(view[pos + _RECORD_HEADER:end]),
                        self.segments, self.requests)
            pos = end
        self.offset += pos
        if (len(self.segments), len(self.requests)) == before:
            return False
        self.segments.sort(key=lambda s: s.ts)  # nearly sorted already: linear
        self.requests.sort(key=lambda r: r.ts)
        return True

    def _feed_whole(self, data: bytes) -> bool:
        if not data:
            return False
        self._whole = (self._whole or b"") + data
        self.offset += len(data)
        try:
            self.segments, self.requests = read_capture(self._whole)
        except PcapError:
            return False
        return True


@dataclass
class _Direction:
    """Reassembly state of one direction."""

    base: int | None = None  # sequence number of the first data byte (ISN + 1)
    next_off: int = 0
    pending: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    chunks: list[Chunk] = field(default_factory=list)
    fin_off: int | None = None
    fin_ts: float | None = None

    def offset(self, seq: int) -> int:
        assert self.base is not None
        off = (seq - self.base) % _SEQ_MOD
        # Far "ahead" by more than half the sequence space means behind: an old retransmission.
        return off - _SEQ_MOD if off >= _HALF else off

    def add(self, seg: Segment) -> None:
        start = seg.seq + 1 if seg.syn else seg.seq  # the SYN itself takes one sequence number
        if self.base is None:
            self.base = start
        off = self.offset(start)
        if seg.payload and not seg.truncated:
            self._deliver(off, seg.payload, seg.ts)
        if seg.fin and not seg.truncated:
            fin_off = off + len(seg.payload)
            if self.fin_off is None:
                self.fin_off = fin_off
        if self.fin_off is not None and self.fin_ts is None and self.next_off >= self.fin_off:
            self.fin_ts = seg.ts

    def _deliver(self, off: int, data: bytes, ts: float) -> None:
        end = off + len(data)
        if end <= self.next_off:
            return  # every byte already delivered: a retransmission or a duplicate capture
        if off > self.next_off:
            # After a hole: keep the longest segment per offset until the hole is filled.
            kept = self.pending.get(off)
            if kept is None or len(kept[0]) < len(data):
                self.pending[off] = (data, ts)
            return
        self._append(data[self.next_off - off:], ts)
        # The hole may be filled now: these bytes become readable at this packet's time.
        while True:
            ready = [o for o in self.pending if o <= self.next_off]
            if not ready:
                break
            for o in sorted(ready):
                held, _ = self.pending.pop(o)
                if o + len(held) > self.next_off:
                    self._append(held[self.next_off - o:], ts)

    def _append(self, data: bytes, ts: float) -> None:
        self.chunks.append(Chunk(ts, data))
        self.next_off += len(data)

    def stream(self) -> Stream:
        gap = bool(self.pending) or (self.fin_off is not None and self.next_off < self.fin_off)
        return Stream(tuple(self.chunks), self.fin_ts, gap)


@dataclass
class _Builder:
    src: str
    sport: int
    dst: str
    dport: int
    first_ts: float
    isn: int | None
    last_ts: float = 0.0
    synack: bool = False
    server_replied: bool = False  # anything at all from the server side
    refused: bool = False
    rst_ts: float | None = None
    packets: int = 0
    client: _Direction = field(default_factory=_Direction)
    server: _Direction = field(default_factory=_Direction)

    def over(self) -> bool:
        both_fin = self.client.fin_ts is not None and self.server.fin_ts is not None
        return self.rst_ts is not None or both_fin

    def add(self, seg: Segment) -> None:
        self.packets += 1
        self.last_ts = seg.ts
        if self.rst_ts is not None:
            return  # the connection is gone for both applications; late bytes never reached one
        from_client = (seg.src, seg.sport) == (self.src, self.sport)
        if not from_client:
            self.server_replied = True
            if seg.syn and seg.ack_flag:
                self.synack = True
        if seg.rst:
            if not from_client and not self.synack:
                self.refused = True
            self.rst_ts = seg.ts
            return
        (self.client if from_client else self.server).add(seg)

    def build(self) -> Connection:
        client, server = self.client.stream(), self.server.stream()
        if self.rst_ts is not None:
            end, end_ts = "rst", self.rst_ts
        elif client.fin_ts is not None or server.fin_ts is not None:
            end = "fin"
            end_ts = min(t for t in (client.fin_ts, server.fin_ts) if t is not None)
        else:
            end, end_ts = "open", None
        return Connection(
            src=self.src, sport=self.sport, dst=self.dst, dport=self.dport,
            first_ts=self.first_ts, last_ts=self.last_ts, isn=self.isn,
            syn_only=self.isn is not None and not self.server_replied,
            refused=self.refused, established=self.synack or self.isn is None,
            end=end, end_ts=end_ts, client=client, server=server, packets=self.packets,
        )


def _canonical(seg: Segment) -> tuple[tuple[str, int], tuple[str, int]]:
    a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
    return (a, b) if a <= b else (b, a)


def read_connections(pcap: bytes) -> list[Connection]:
    """Every TCP connection (and connection attempt) in one capture, ordered by first packet."""
    return connections_of(read_segments(pcap))


def connections_of(segments: Iterable[Segment]) -> list[Connection]:
    """The TCP connections (and connection attempts) of one capture's segments, ordered by first packet."""
    done: list[_Builder] = []
    active: dict[tuple[tuple[str, int], tuple[str, int]], _Builder] = {}
    for seg in segments:
        canon = _canonical(seg)
        current = active.get(canon)
        opening = seg.syn and not seg.ack_flag
        if opening and current is not None and not (
                current.isn == seg.seq and (current.src, current.sport) == (seg.src, seg.sport)):
            # The same address/port pair used again (a new ISN): a new connection.
            done.append(current)
            current = None
        if current is None:
            if opening:
                current = _Builder(seg.src, seg.sport, seg.dst, seg.dport, seg.ts, seg.seq)
            else:
                if seg.rst and not seg.payload:
                    continue  # an RST answering something outside the capture says nothing useful
                # The capture started after the SYN: the client is the side not on the SMTP port.
                client_is_src = seg.dport == SMTP_PORT or seg.sport != SMTP_PORT
                if client_is_src:
                    current = _Builder(seg.src, seg.sport, seg.dst, seg.dport, seg.ts, None)
                else:
                    current = _Builder(seg.dst, seg.dport, seg.src, seg.sport, seg.ts, None)
            active[canon] = current
        current.add(seg)
    done.extend(active.values())
    done.sort(key=lambda b: b.first_ts)
    return [b.build() for b in done]


def merge_connections(captures: Sequence[Sequence[Connection]]) -> list[Connection]:
    """One list from several captures, each connection once.

    A connection between two captured hosts (relay -> mx) is in both hosts' captures. The client's
    ISN identifies it exactly (both copies saw the same SYN); without a SYN the 4-tuple and a first
    packet within a second stand in. The copy holding more payload is kept (a capture that started
    late or dropped packets loses), the earlier capture in ``captures`` on a tie.
    """
    chosen: list[Connection] = []
    # Candidates by 4-tuple: a long-lived shared topology's captures hold hundreds of connections.
    by_tuple: dict[tuple[str, int, str, int], list[int]] = {}
    for capture in captures:
        for conn in capture:
            key = (conn.src, conn.sport, conn.dst, conn.dport)
            candidates = by_tuple.setdefault(key, [])
            same = next((i for i in candidates if _same_connection(chosen[i], conn)), None)
            if same is None:
                candidates.append(len(chosen))
                chosen.append(conn)
            elif conn.payload_bytes > chosen[same].payload_bytes:
                chosen[same] = conn
    chosen.sort(key=lambda c: c.first_ts)
    return chosen


def _same_connection(a: Connection, b: Connection) -> bool:
    if (a.src, a.sport, a.dst, a.dport) != (b.src, b.sport, b.dst, b.dport):
        return False
    if a.isn is not None and b.isn is not None:
        return a.isn == b.isn
    return abs(a.first_ts - b.first_ts) < 1.0
