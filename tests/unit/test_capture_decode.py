"""The capture decoder on real captures (tests/unit/fixtures/pcap/, made by
tests/fixtures_tools/make_pcap_fixtures.py with the roles' real captures), on those captures
rewritten the way networks and capture files misbehave (duplicates, reordering, overlapping
retransmissions, sequence wrap-around, other link types, a cut-off last record), and on a few
synthetic conversations for what the bundled Postfix roles never do (STARTTLS, AUTH, 421). No Docker."""

from __future__ import annotations

import io
import itertools
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt  # type: ignore[import-untyped]
import pytest

from harness.observe.hops import CapturedHops, unanswered_requests
from harness.observe.smtpstream import (
    NO_CLIENT_HELLO,
    SYN_ANSWER_S,
    TLS_TEXT,
    UNSOLICITED,
    connections,
    decode_session,
    decode_sessions,
    merge_captures,
)
from harness.observe.tcpflows import NeighbourRequest, PcapError, read_capture, read_segments
from harness.smtp.transcript import Transcript

FIXTURES = Path(__file__).parent / "fixtures" / "pcap"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
NAMES: dict[str, str] = MANIFEST["names"]
GATEWAY: str = MANIFEST["gateway"]
ADDRESS = {role: address for address, role in NAMES.items()}

EHLO_MX_LINES = ("250-mx.example.test", "250-PIPELINING", "250-SIZE 10240000", "250-VRFY", "250-ETRN",
                 "250-ENHANCEDSTATUSCODES", "250-8BITMIME", "250-DSN", "250-SMTPUTF8", "250 CHUNKING")


def pcap(case: str, role: str) -> bytes:
    name: str = MANIFEST["cases"][case]["files"][role]
    return (FIXTURES / name).read_bytes()


def pcaps(case: str) -> list[bytes]:
    return [(FIXTURES / f).read_bytes() for f in MANIFEST["cases"][case]["files"].values()]


def decode(data: bytes | list[bytes], case: str, **kwargs: Any) -> list[Transcript]:
    return decode_sessions(data, names=NAMES, start_wall=MANIFEST["cases"][case]["start_wall"], **kwargs)


Row = tuple[str, int, str, int | None, str | None]


def rows(transcripts: list[Transcript]) -> list[Row]:
    return [(e.hop, e.session, e.command, e.code, e.enhanced) for t in transcripts for e in t.exchanges]


def full(transcripts: list[Transcript]) -> list[tuple[object, ...]]:
    """Everything but the times (rewritten captures move packets in time)."""
    return [(e.hop, e.session, e.command, e.sent, e.code, e.enhanced, e.text, e.lines)
            for t in transcripts for e in t.exchanges]


# -- real captures ---------------------------------------------------------------------------------

def test_relay_to_mx_pipelined_session_exactly() -> None:
    sessions = decode(pcaps("relay_mx_pipelined"), "relay_mx_pipelined", exclude_sources=[GATEWAY])
    assert rows(sessions) == [
        ("relay->mx", 1, "CONNECT", 220, None),
        ("relay->mx", 1, "EHLO", 250, None),
        ("relay->mx", 1, "MAIL", 250, "2.1.0"),
        ("relay->mx", 1, "RCPT", 250, "2.1.5"),
        ("relay->mx", 1, "RCPT", 250, "2.1.5"),
        ("relay->mx", 1, "DATA", 354, None),
        ("relay->mx", 1, "END-OF-DATA", 250, "2.0.0"),
        ("relay->mx", 1, "QUIT", 221, "2.0.0"),
    ]
    ex = sessions[0].exchanges
    assert [e.sent for e in ex] == [
        None, "EHLO relay.origin.test", ex[2].sent, "RCPT TO:<bob@example.test> ORCPT=rfc822;bob@example.test",
        "RCPT TO:<carol@example.test> ORCPT=rfc822;carol@example.test", "DATA", ".", "QUIT"]
    assert ex[2].sent is not None and ex[2].sent.startswith("MAIL FROM:<alice@origin.test> SIZE=")
    assert ex[0].text == "mx.example.test ESMTP Postfix (mailflow-harness role mx)"
    assert ex[0].lines == ("220 mx.example.test ESMTP Postfix (mailflow-harness role mx)",)
    assert ex[1].lines == EHLO_MX_LINES
    assert ex[3].text == "2.1.5 Ok"  # like the harness's client: the enhanced code stays in the text
    assert ex[5].text == "End data with <CR><LF>.<CR><LF>"
    assert ex[6].text.startswith("2.0.0 Ok: queued as ")
    assert ex[7].text == "2.0.0 Bye"
    # Times: seconds since the case started, in order, replies in one segment share one time.
    times = [e.at_s for e in ex]
    assert times == sorted(times) and 0 < times[0] < 5
    assert len({e.at_s for e in ex[2:6]}) == 1


def test_relay_pipelines_mail_rcpt_and_data_in_one_segment() -> None:
    # What makes order pairing necessary: four commands in one write, four replies read afterwards.
    conn = next(c for c in connections(pcap("relay_mx_pipelined", "mx")) if c.src == ADDRESS["relay"])
    pipelined = [c.data for c in conn.client.chunks if c.data.startswith(b"MAIL FROM:")]
    assert len(pipelined) == 1
    assert pipelined[0].count(b"RCPT TO:") == 2 and pipelined[0].endswith(b"DATA\r\n")


def test_connection_in_both_captures_is_decoded_once() -> None:
    relay_view = decode(pcap("relay_mx_pipelined", "relay"), "relay_mx_pipelined")
    mx_view = decode(pcap("relay_mx_pipelined", "mx"), "relay_mx_pipelined")
    both = decode(pcaps("relay_mx_pipelined"), "relay_mx_pipelined")
    assert [t.hop for t in relay_view] == ["client->relay", "relay->mx"]
    assert [t.hop for t in mx_view] == ["relay->mx"]
    assert [(t.hop, t.session) for t in both] == [("client->relay", 1), ("relay->mx", 1)]
    # Seen from either end, the hop reads the same (the times differ by the wire's microseconds).
    assert full([relay_view[1]]) == full(mx_view) == full([both[1]])
    assert len(merge_captures(pcaps("relay_mx_pipelined"))) == 2


def test_client_session_is_decoded_unless_excluded() -> None:
    sessions = decode(pcap("relay_mx_pipelined", "relay"), "relay_mx_pipelined")
    client = sessions[0]
    assert client.hop == "client->relay"
    assert [(e.command, e.code) for e in client.exchanges] == [
        ("CONNECT", 220), ("EHLO", 250), ("MAIL", 250), ("RCPT", 250), ("RCPT", 250), ("DATA", 354),
        ("END-OF-DATA", 250), ("QUIT", 221)]
    excluded = decode(pcap("relay_mx_pipelined", "relay"), "relay_mx_pipelined", exclude_sources={GATEWAY})
    assert [t.hop for t in excluded] == ["relay->mx"]


def test_at_s_counts_from_start_wall() -> None:
    start = MANIFEST["cases"]["relay_mx_pipelined"]["start_wall"]
    later = decode_sessions(pcap("relay_mx_pipelined", "mx"), names=NAMES, start_wall=start + 1.0)
    now = decode(pcap("relay_mx_pipelined", "mx"), "relay_mx_pipelined")
    for a, b in zip(now[0].exchanges, later[0].exchanges, strict=True):
        assert a.at_s - b.at_s == pytest.approx(1.0)


def test_commands_split_across_segments_and_a_split_final_dot() -> None:
    sessions = decode(pcap("split_segments", "mx"), "split_segments")
    assert rows(sessions) == [
        ("client->mx", 1, "CONNECT", 220, None),
        ("client->mx", 1, "EHLO", 250, None),
        ("client->mx", 1, "MAIL", 250, "2.1.0"),
        ("client->mx", 1, "RCPT", 250, "2.1.5"),
        ("client->mx", 1, "DATA", 354, None),
        # The body held "QUIT" and "RSET" lines: message text, not commands.
        ("client->mx", 1, "END-OF-DATA", 250, "2.0.0"),
        ("client->mx", 1, "NOOP", 250, "2.0.0"),
        ("client->mx", 1, "QUIT", 221, "2.0.0"),
    ]
    ehlo = sessions[0].exchanges[1]
    assert ehlo.sent == "EHLO client.origin.test"
    assert ehlo.lines == EHLO_MX_LINES
    assert ehlo.text == "\n".join(line[4:] for line in EHLO_MX_LINES)
    conn = connections(pcap("split_segments", "mx"))[0]
    client_writes = [c.data for c in conn.client.chunks]
    assert b"EHLO cl" in client_writes and b"ient.origin.test\r\n" in client_writes  # really two segments
    assert b"." in client_writes and b"\r\n" in client_writes
    # The reply to the dot came only after the dot's CRLF (0.2 s after the dot itself).
    eod = sessions[0].exchanges[5]
    assert eod.at_s - sessions[0].exchanges[4].at_s > 0.35


def test_bdat_chunks_are_not_commands() -> None:
    sessions = decode(pcap("bdat", "mx"), "bdat")
    assert [(e.command, e.sent, e.code) for e in sessions[0].exchanges] == [
        ("CONNECT", None, 220), ("EHLO", "EHLO client.origin.test", 250),
        ("MAIL", "MAIL FROM:<alice@origin.test>", 250), ("RCPT", "RCPT TO:<bob@example.test>", 250),
        ("BDAT", "BDAT 26", 250), ("BDAT", "BDAT 9 LAST", 250), ("QUIT", "QUIT", 221)]
    assert sessions[0].exchanges[4].text == "2.0.0 Ok: 26 bytes"
    assert sessions[0].exchanges[5].text.startswith("2.0.0 Ok: 35 bytes queued as ")


def test_521_greeting_then_close() -> None:
    sessions = decode(pcaps("nomail_521"), "nomail_521")
    by_hop = {t.hop: t for t in sessions}
    client = by_hop["client->nomail"]
    assert rows([client]) == [("client->nomail", 1, "CONNECT", 521, "5.3.2")]
    assert client.exchanges[0].text == "5.3.2 Service currently unavailable"
    assert client.exchanges[0].lines == ("521 5.3.2 Service currently unavailable",)
    # Postfix's smtp client says QUIT after the 521; nomail has closed already and answers with RST.
    relay = by_hop["relay->nomail"]
    assert rows([relay]) == [("relay->nomail", 1, "CONNECT", 521, "5.3.2"), ("relay->nomail", 1, "QUIT", None, None)]
    assert relay.exchanges[1].text == "connection reset"
    assert relay.exchanges[1].sent == "QUIT"
    conn = next(c for c in connections(pcaps("nomail_521")) if c.src == GATEWAY and c.dst == ADDRESS["nomail"])
    assert conn.end == "fin" and conn.server.fin_ts is not None


def test_reset_with_a_command_unanswered() -> None:
    sessions = decode(pcap("reset", "mx"), "reset")
    assert rows(sessions) == [
        ("client->mx", 1, "CONNECT", 220, None),
        ("client->mx", 1, "EHLO", 250, None),
        ("client->mx", 1, "MAIL", None, None),
    ]
    mail = sessions[0].exchanges[2]
    assert (mail.sent, mail.text, mail.lines) == ("MAIL FROM:<alice@origin.test>", "connection reset", ())
    assert connections(pcap("reset", "mx"))[0].end == "rst"


def test_attempts_that_never_got_an_answer_are_visible() -> None:
    data = pcap("refused_and_syn_only", "relay")
    conns = connections(data)
    relay = ADDRESS["relay"]
    assert all(c.src == relay for c in conns)
    assert [(c.dst, c.refused, c.syn_only, c.established) for c in conns] == [
        (ADDRESS["dns"], True, False, False),
        (conns[1].dst, True, False, False),
        (conns[1].dst, False, True, False),
    ]
    vanished = conns[2]
    assert vanished.packets == 2  # the SYN and its retransmission: one attempt
    assert not any(c.dst == ADDRESS["mx"] for c in conns)  # what a "no connection to mx" check reads
    sessions = decode(data, "refused_and_syn_only")
    assert [(t.hop, t.session, e.command, e.code, e.text) for t in sessions for e in t.exchanges] == [
        ("relay->dns", 1, "CONNECT", None, "connection refused"),
        (f"relay->{vanished.dst}", 1, "CONNECT", None, "connection refused"),  # unknown address: named by itself
        (f"relay->{vanished.dst}", 2, "CONNECT", None, "no answer to the connection attempt"),
    ]



def test_a_syn_read_right_after_it_was_sent_is_an_attempt_in_progress() -> None:
    # A hop step reading the capture between a SYN and its SYN-ACK must wait, not judge "no answer".
    vanished = connections(pcap("refused_and_syn_only", "relay"))[2]
    start = MANIFEST["cases"]["refused_and_syn_only"]["start_wall"]
    kwargs: dict[str, Any] = {"hop": "relay->x", "session": 1, "start_wall": start}
    young = decode_session(vanished, read_wall=vanished.last_ts + 0.2, **kwargs)
    assert not young.closed and young.exchanges[0].pending and young.exchanges[0].code is None
    old = decode_session(vanished, read_wall=vanished.last_ts + SYN_ANSWER_S + 0.1, **kwargs)
    assert old.closed and old.exchanges[0].text == "no answer to the connection attempt"
    assert not old.exchanges[0].pending
    assert decode_session(vanished, **kwargs).closed  # a recorded capture: no reader's clock, final

def test_sessions_are_numbered_per_hop_in_order_of_first_packet() -> None:
    sessions = decode(pcaps("nomail_521"), "nomail_521")
    assert [(t.hop, t.session) for t in sessions] == [
        ("client->nomail", 1), ("client->relay", 1), ("relay->nomail", 1)]
    firsts = [c.first_ts for c in connections(pcaps("nomail_521"))]
    assert firsts == sorted(firsts)


def test_linktype_is_linux_cooked_v2() -> None:
    reader = dpkt.pcap.Reader(io.BytesIO(pcap("reset", "mx")))
    assert reader.datalink() == 276  # tcpdump -i any on Debian bookworm (libpcap 1.10)


# -- the same captures, rewritten -----------------------------------------------------------------

@dataclass
class Record:
    ts: float
    ip: Any  # dpkt.ip.IP


def records(data: bytes) -> Iterator[Record]:
    reader = dpkt.pcap.Reader(io.BytesIO(data))
    assert reader.datalink() == 276
    for ts, frame in reader:
        yield Record(ts, dpkt.sll2.SLL2(frame).data)


def write(recs: list[Record], linktype: str = "sll2") -> bytes:
    out = io.BytesIO()
    number = {"sll2": 276, "sll": 113, "ethernet": 1, "raw": 101}[linktype]
    writer = dpkt.pcap.Writer(out, snaplen=262144, linktype=number)
    for rec in recs:
        ip = rec.ip
        ip.len = ip.__hdr_len__ + len(ip.opts) + len(bytes(ip.data))
        if linktype == "sll2":
            frame: bytes = bytes(dpkt.sll2.SLL2(ethtype=0x0800, intindex=2, hrd=1, type=0, hlen=6, data=ip))
        elif linktype == "sll":
            frame = bytes(dpkt.sll.SLL(type=0, hrd=1, hlen=6, ethtype=0x0800, data=ip))
        elif linktype == "ethernet":
            frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))
            frame += b"\x00" * max(0, 60 - len(frame))  # Ethernet padding must not become payload
        else:
            frame = bytes(ip)
        writer.writepkt(frame, ts=rec.ts)
    return out.getvalue()


def clone(rec: Record, *, payload: bytes | None = None, seq: int | None = None, ts: float | None = None) -> Record:
    ip = dpkt.ip.IP(bytes(rec.ip))
    tcp = ip.data
    if payload is not None:
        tcp.data = payload
    if seq is not None:
        tcp.seq = seq
    tcp.sum = 0
    ip.data = tcp
    ip.sum = 0
    return Record(rec.ts if ts is None else ts, ip)


def duplicated(recs: list[Record]) -> list[Record]:
    return [r2 for r in recs for r2 in (r, clone(r))]


def swapped(recs: list[Record]) -> list[Record]:
    """Consecutive data segments of one direction arrive in the opposite order (times swapped too)."""
    out = list(recs)
    data = [i for i, r in enumerate(out) if r.ip.data.data]
    swaps, used = 0, set[int]()
    for a, b in itertools.pairwise(data):
        same_way = out[a].ip.src == out[b].ip.src
        between = any(out[i].ip.data.data and out[i].ip.src != out[a].ip.src for i in range(a + 1, b))
        if same_way and not between and a not in used:
            ta, tb = out[a].ts, out[b].ts
            out[a], out[b] = clone(out[b], ts=ta), clone(out[a], ts=tb)
            used.add(b)
            swaps += 1
    assert swaps, "the capture has no two consecutive segments of one direction"
    return out


def halves_reversed(recs: list[Record]) -> list[Record]:
    """Each data segment as two, the second half first (same time: the file order decides)."""
    out: list[Record] = []
    for rec in recs:
        payload = bytes(rec.ip.data.data)
        if len(payload) < 2:
            out.append(rec)
            continue
        cut = len(payload) // 2
        out.append(clone(rec, payload=payload[cut:], seq=(rec.ip.data.seq + cut) % 2**32))
        out.append(clone(rec, payload=payload[:cut]))
    return out


def overlapping(recs: list[Record]) -> list[Record]:
    """Each data segment as: its tail (ahead of a hole), its first two thirds, then all of it again."""
    out: list[Record] = []
    for rec in recs:
        payload = bytes(rec.ip.data.data)
        if len(payload) < 3:
            out.append(rec)
            continue
        seq = rec.ip.data.seq
        cut, head = len(payload) // 2, (2 * len(payload)) // 3
        out.append(clone(rec, payload=payload[cut:], seq=(seq + cut) % 2**32))
        out.append(clone(rec, payload=payload[:head]))
        out.append(clone(rec))
    return out


def wrapped(recs: list[Record]) -> list[Record]:
    """Sequence numbers moved so both directions wrap past 2**32 a few bytes into the session."""
    isn: dict[str, int] = {}
    for rec in recs:
        if rec.ip.data.flags & dpkt.tcp.TH_SYN:
            isn.setdefault(bytes(rec.ip.src).hex(), rec.ip.data.seq)
    out = []
    for rec in recs:
        src, dst = bytes(rec.ip.src).hex(), bytes(rec.ip.dst).hex()
        shift_src = (2**32 - 20 - isn[src]) % 2**32
        shift_dst = (2**32 - 20 - isn[dst]) % 2**32
        new = clone(rec, seq=(rec.ip.data.seq + shift_src) % 2**32)
        new.ip.data.ack = (rec.ip.data.ack + shift_dst) % 2**32
        out.append(new)
    return out


REWRITES: dict[str, Callable[[list[Record]], list[Record]]] = {
    "duplicated": duplicated, "halves_reversed": halves_reversed, "overlapping": overlapping, "wrapped": wrapped}


@pytest.mark.parametrize("case,role", [("split_segments", "mx"), ("relay_mx_pipelined", "mx"), ("bdat", "mx")])
@pytest.mark.parametrize("rewrite", list(REWRITES), ids=list(REWRITES))
def test_reassembly_survives(case: str, role: str, rewrite: str) -> None:
    original = pcap(case, role)
    changed = write(REWRITES[rewrite](list(records(original))))
    assert changed != original
    assert full(decode(changed, case)) == full(decode(original, case))


def test_reordered_bytes_become_readable_when_the_hole_is_filled() -> None:
    original = pcap("split_segments", "mx")
    recs = swapped(list(records(original)))
    assert full(decode(write(recs), "split_segments")) == full(decode(original, "split_segments"))
    conn = connections(write(recs))[0]
    # "ient.origin.test" came first and waited for "EHLO cl": both readable at the later time.
    chunks = [c for c in conn.client.chunks if c.data in (b"EHLO cl", b"ient.origin.test\r\n")]
    assert [c.data for c in chunks] == [b"EHLO cl", b"ient.origin.test\r\n"]
    assert chunks[0].ts == chunks[1].ts


@pytest.mark.parametrize("linktype", ["sll", "ethernet", "raw"])
def test_other_link_types(linktype: str) -> None:
    original = pcap("relay_mx_pipelined", "relay")
    converted = write(list(records(original)), linktype)
    assert full(decode(converted, "relay_mx_pipelined")) == full(decode(original, "relay_mx_pipelined"))


def test_a_file_cut_mid_record_decodes_what_is_complete() -> None:
    data = pcap("split_segments", "mx")
    # tcpdump -U writes whole records, but a copy taken mid-write may end inside one.
    for cut in (5, 30, 100):
        sessions = decode(data[:-cut], "split_segments")
        assert rows(sessions)[:-1] == rows(decode(data, "split_segments"))[:len(rows(sessions)) - 1]
    segments = read_segments(data[:-5])
    assert len(segments) == len(read_segments(data))
    assert segments[-1].truncated and not segments[-2].truncated


def test_a_copy_missing_the_end_loses_to_the_complete_one() -> None:
    mx = pcap("relay_mx_pipelined", "mx")
    half = write(list(records(mx))[:9])
    merged = decode([half, pcap("relay_mx_pipelined", "relay")], "relay_mx_pipelined", exclude_sources=[GATEWAY])
    assert full(merged) == full(decode(mx, "relay_mx_pipelined"))


def test_not_a_capture() -> None:
    with pytest.raises(PcapError):
        connections(b"hello, not a pcap")


# -- synthetic conversations ----------------------------------------------------------------------

CLIENT, SERVER = "10.9.0.5", "10.9.0.25"


def conversation(turns: list[tuple[str, bytes]], *, end: str = "fin", sport: int = 40000, isn: int = 1000,
                 t0: float = 100.0) -> list[Record]:
    """A TCP connection CLIENT:sport -> SERVER:25 carrying ``turns`` ("c" or "s", bytes), then ``end``."""
    seq = {"c": isn, "s": 9000}
    ts = t0

    def seg(side: str, flags: int, payload: bytes = b"") -> Record:
        nonlocal ts
        ts += 0.001
        src, dst = (CLIENT, SERVER) if side == "c" else (SERVER, CLIENT)
        sp, dp = (sport, 25) if side == "c" else (25, sport)
        tcp = dpkt.tcp.TCP(sport=sp, dport=dp, seq=seq[side] % 2**32, flags=flags, data=payload)
        tcp.off = 5
        ip = dpkt.ip.IP(src=bytes(map(int, src.split("."))), dst=bytes(map(int, dst.split("."))),
                        p=dpkt.ip.IP_PROTO_TCP, data=tcp)
        seq[side] += len(payload) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)
        return Record(ts, ip)

    ack = dpkt.tcp.TH_ACK
    recs = [seg("c", dpkt.tcp.TH_SYN), seg("s", dpkt.tcp.TH_SYN | ack), seg("c", ack)]
    recs += [seg(side, ack | dpkt.tcp.TH_PUSH, data) for side, data in turns]
    if end == "fin":
        recs += [seg("c", ack | dpkt.tcp.TH_FIN), seg("s", ack | dpkt.tcp.TH_FIN), seg("c", ack)]
    elif end == "rst":
        recs.append(seg("c", dpkt.tcp.TH_RST))
    return recs


def synthetic(recs: list[Record], **kwargs: Any) -> list[Transcript]:
    return decode_sessions(write(recs), names={CLIENT: "a", SERVER: "b"}, start_wall=100.0, **kwargs)


def commands(transcripts: list[Transcript]) -> list[tuple[str, int | None]]:
    return [(e.command, e.code) for t in transcripts for e in t.exchanges]


def test_starttls_stops_decoding() -> None:
    recs = conversation([("s", b"220 b ESMTP\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250-b\r\n250 STARTTLS\r\n"),
                         ("c", b"STARTTLS\r\n"), ("s", b"220 2.0.0 Ready to start TLS\r\n"),
                         ("c", b"\x16\x03\x01\x00\x10QUIT\r\n"), ("s", b"\x16\x03\x03250 looks like a reply\r\n")])
    sessions = synthetic(recs)
    assert commands(sessions) == [("CONNECT", 220), ("EHLO", 250), ("STARTTLS", 220), ("TLS", None)]
    assert sessions[0].exchanges[-1].text == TLS_TEXT


def test_a_client_that_goes_on_in_clear_after_the_220_to_starttls_is_decoded_in_clear() -> None:
    """A relay that got 220 to STARTTLS and then sent its MAIL without a handshake sent the envelope in
    clear: `cleartext: false` must see that MAIL, not take the rest for encrypted."""
    recs = conversation([("s", b"220 b ESMTP\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250-b\r\n250 STARTTLS\r\n"),
                         ("c", b"STARTTLS\r\n"), ("s", b"220 2.0.0 Ready to start TLS\r\n"),
                         ("c", b"MAIL FROM:<alice@origin.test>\r\n"), ("s", b"\x15\x03\x03\x00\x02\x02\x0a"),
                         ])
    (session,) = synthetic(recs)
    assert [e.command for e in session.exchanges] == ["CONNECT", "EHLO", "STARTTLS", "TLS", "MAIL"]
    assert session.exchanges[3].text.endswith(NO_CLIENT_HELLO)
    assert session.first("MAIL") is not None


def test_refused_data_leaves_the_following_bytes_commands() -> None:
    recs = conversation([("s", b"220 b\r\n"), ("c", b"HELO a\r\nMAIL FROM:<>\r\nRCPT TO:<x@b>\r\nDATA\r\n"),
                         ("s", b"250 b\r\n250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n"),
                         ("c", b"RSET\r\nQUIT\r\n"), ("s", b"250 ok\r\n221 bye\r\n")])
    assert commands(synthetic(recs)) == [("CONNECT", 220), ("HELO", 250), ("MAIL", 250), ("RCPT", 550),
                                         ("DATA", 554), ("RSET", 250), ("QUIT", 221)]


def test_empty_message_and_unknown_verbs() -> None:
    recs = conversation([("s", b"220 b\r\n"), ("c", b"EHLO a\r\nVRFY bob\r\nXYZZY\r\nMAIL FROM:<>\r\n"),
                         ("s", b"250 b\r\n252 2.0.0 maybe\r\n502 5.5.2 what\r\n250 ok\r\n"),
                         ("c", b"RCPT TO:<x@b>\r\nDATA\r\n"), ("s", b"250 ok\r\n354 go\r\n"),
                         ("c", b".\r\nQUIT\r\n"), ("s", b"250 2.0.0 queued\r\n221 bye\r\n")])
    sessions = synthetic(recs)
    assert commands(sessions) == [("CONNECT", 220), ("EHLO", 250), ("VRFY", 252), ("XYZZY", 502), ("MAIL", 250),
                                  ("RCPT", 250), ("DATA", 354), ("END-OF-DATA", 250), ("QUIT", 221)]
    assert sessions[0].exchanges[3].enhanced == "5.5.2"


def test_auth_answers_are_not_commands_and_are_masked() -> None:
    recs = conversation([("s", b"220 b\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250 AUTH LOGIN PLAIN\r\n"),
                         ("c", b"AUTH LOGIN\r\n"), ("s", b"334 VXNlcm5hbWU6\r\n"), ("c", b"Ym9i\r\n"),
                         ("s", b"334 UGFzc3dvcmQ6\r\n"), ("c", b"c2VjcmV0\r\n"), ("s", b"235 2.7.0 ok\r\n"),
                         ("c", b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"), ("s", b"503 5.5.1 already\r\n")])
    sessions = synthetic(recs)
    assert [(e.command, e.sent, e.code) for e in sessions[0].exchanges] == [
        ("CONNECT", None, 220), ("EHLO", "EHLO a", 250), ("AUTH", "AUTH LOGIN", 334), ("AUTH", "***", 334),
        ("AUTH", "***", 235), ("AUTH", "AUTH PLAIN ***", 503)]


def test_unsolicited_421_and_a_command_the_server_closed_on() -> None:
    recs = conversation([("s", b"220 b\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250 b\r\n"),
                         ("s", b"421 4.4.2 b Error: timeout exceeded\r\n"), ("c", b"QUIT\r\n")])
    sessions = synthetic(recs)
    ex = sessions[0].exchanges
    assert [(e.command, e.code, e.text) for e in ex] == [
        ("CONNECT", 220, "b"), ("EHLO", 250, "b"), (UNSOLICITED, 421, "4.4.2 b Error: timeout exceeded"),
        ("QUIT", None, "connection closed")]


def test_unreadable_reply_stops_pairing() -> None:
    recs = conversation([("s", b"220 b\r\n"), ("c", b"EHLO a\r\nNOOP\r\n"), ("s", b"hello there\r\n250 ok\r\n")])
    ex = synthetic(recs)[0].exchanges
    assert [(e.command, e.code, e.text) for e in ex] == [
        ("CONNECT", 220, "b"), ("EHLO", None, "unreadable reply: hello there")]


def test_greeting_never_came_and_open_connection() -> None:
    closed = synthetic(conversation([], end="fin"))
    assert [(e.command, e.code, e.text) for e in closed[0].exchanges] == [("CONNECT", None, "connection closed")]
    still_open = synthetic(conversation([("s", b"220 b\r\n"), ("c", b"EHLO a\r\n")], end="open"))
    assert still_open[0].exchanges[-1].text.startswith("no reply yet")


def test_port_reuse_makes_two_sessions_and_exclude_drops_by_source() -> None:
    first = conversation([("s", b"221 b\r\n")], sport=40000, isn=5)
    second = conversation([("s", b"554 b\r\n")], sport=40000, isn=77777, t0=200.0)
    sessions = synthetic(first + second)
    assert [(t.hop, t.session, t.exchanges[0].code) for t in sessions] == [("a->b", 1, 221), ("a->b", 2, 554)]
    assert synthetic(first + second, exclude_sources=[CLIENT]) == []


def test_capture_that_missed_the_syn_is_not_guessed_at() -> None:
    recs = conversation([("s", b"220 b\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250 b\r\n")])[3:]
    sessions = synthetic(recs)
    assert [(e.command, e.code) for e in sessions[0].exchanges] == [("CONNECT", None)]
    conn = connections(write(recs))[0]
    assert (conn.src, conn.dport, conn.isn) == (CLIENT, 25, None)


def test_message_or_chunk_cut_off_by_the_end_of_the_connection() -> None:
    data = conversation([("s", b"220 b\r\n"), ("c", b"EHLO a\r\nMAIL FROM:<>\r\nRCPT TO:<x@b>\r\nDATA\r\n"),
                         ("s", b"250 b\r\n250 ok\r\n250 ok\r\n354 go\r\n"), ("c", b"Subject: x\r\n\r\nhal")],
                        end="rst")
    ex = synthetic(data)[0].exchanges
    assert [(e.command, e.sent, e.code, e.text) for e in ex[-2:]] == [
        ("DATA", "DATA", 354, "go"), ("END-OF-DATA", None, None, "connection reset (before the final dot)")]
    chunk = conversation([("s", b"220 b\r\n"), ("c", b"EHLO a\r\n"), ("s", b"250 b\r\n"),
                          ("c", b"BDAT 100 LAST\r\nonly a few bytes")], end="fin")
    ex = synthetic(chunk)[0].exchanges
    assert [(e.command, e.sent, e.code, e.text) for e in ex[-1:]] == [
        ("BDAT", "BDAT 100 LAST", None, "connection closed (before the whole chunk was sent)")]


# -- a scenario's window on a shared topology ---------------------------------------------------------

class _FixtureCapture:
    def __init__(self, data: bytes, earlier: tuple[bytes, ...] = ()) -> None:
        self.data = data
        self.earlier = earlier

    def read_pcap(self) -> bytes:
        return self.data

    def read_pcaps(self) -> list[bytes]:
        return [*self.earlier, self.data]

    def read_pcap_from(self, offset: int) -> bytes:
        return self.data[offset:]


def _window(start_wall: float) -> CapturedHops:
    captures = {"mx": _FixtureCapture(pcap("relay_mx_pipelined", "mx"))}
    return CapturedHops(captures, NAMES, client_address=GATEWAY, start_wall=start_wall)  # type: ignore[arg-type]


def test_timeline_shows_an_earlier_connection_only_for_transactions_in_the_window() -> None:
    session = decode(pcap("relay_mx_pipelined", "mx"), "relay_mx_pipelined")[0].exchanges
    start = MANIFEST["cases"]["relay_mx_pipelined"]["start_wall"]
    at = {e.command: start + e.at_s for e in session}
    # The window opens before the connection: all of it is this scenario's.
    assert [e.command for e in _window(start).timeline()] == [e.command for e in session]
    # Opened in an earlier scenario, its transaction in this one: from MAIL on.
    assert [e.command for e in _window(at["EHLO"] + 1e-6).timeline()] == [
        "MAIL", "RCPT", "RCPT", "DATA", "END-OF-DATA", "QUIT"]
    # Only its QUIT falls in the window (an idle session closing): not this scenario's traffic, although
    # the hop matcher still sees the connection.
    late = _window(at["END-OF-DATA"] + 1e-6)
    assert late.timeline() == []
    assert [t.hop for t in late.sessions()] == ["relay->mx"]
    # Closed before the window: nothing at all.
    assert _window(at["QUIT"] + 10).sessions() == []


def test_a_capture_started_again_keeps_what_it_had_captured() -> None:
    """A role's container restarted (a fault step): its capture file from before the restart still
    counts, beside the new one (HopCapture.resume keeps it in ``earlier``)."""
    before = pcap("nomail_521", "relay")
    after = pcap("relay_mx_pipelined", "relay")
    start = min(MANIFEST["cases"][c]["start_wall"] for c in ("nomail_521", "relay_mx_pipelined"))
    hops = CapturedHops({"relay": _FixtureCapture(after, earlier=(before,))}, NAMES,  # type: ignore[dict-item]
                        client_address=GATEWAY, start_wall=start)
    assert sorted(t.hop for t in hops.sessions()) == ["relay->mx", "relay->nomail"]
    only_new = CapturedHops({"relay": _FixtureCapture(after)}, NAMES,  # type: ignore[dict-item]
                            client_address=GATEWAY, start_wall=start)
    assert [t.hop for t in only_new.sessions()] == ["relay->mx"]


# -- ARP: an attempt that never put a SYN on the wire -------------------------------------------------

def _arp_request(ts: float, sender: str, target: str, *, op: int = dpkt.arp.ARP_OP_REQUEST) -> tuple[float, bytes]:
    arp = dpkt.arp.ARP(op=op, sha=b"\x02" * 6, spa=socket.inet_aton(sender), tha=b"\x00" * 6,
                       tpa=socket.inet_aton(target))
    return ts, bytes(dpkt.sll2.SLL2(ethtype=0x0806, intindex=2, hrd=1, type=4, hlen=6, data=arp))


def test_arp_requests_are_read_beside_the_segments() -> None:
    # The relay's capture of an SMTP session, with the relay's request for a stopped mx and the answer
    # to another request (only requests say who wanted to reach whom).
    tcp = pcap("reset", "mx")
    reader = dpkt.pcap.Reader(io.BytesIO(tcp))
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, snaplen=262144, linktype=276)
    for ts, frame in reader:
        writer.writepkt(frame, ts=ts)
    for ts, frame in (_arp_request(5.0, "172.30.0.11", "172.30.0.10"),
                      _arp_request(5.1, "172.30.0.12", "172.30.0.11", op=dpkt.arp.ARP_OP_REPLY),
                      _arp_request(5.2, "0.0.0.0", "172.30.0.11")):  # a conflict probe: nobody's wish to send
        writer.writepkt(frame, ts=ts)
    segments, requests = read_capture(out.getvalue())
    assert segments == read_segments(tcp)
    assert requests == [NeighbourRequest(5.0, "172.30.0.11", "172.30.0.10")]


def _conn(src: str, dst: str, first: float, last: float) -> Any:
    return type("Conn", (), {"src": src, "dst": dst, "first_ts": first, "last_ts": last})()


def test_a_wish_to_reach_an_address_that_no_connection_went_with_is_an_attempt() -> None:
    relay, mx, dead = "10.0.0.11", "10.0.0.10", "10.0.0.99"
    asked = [NeighbourRequest(t, relay, dead) for t in (1.0, 1.2, 1.4)]  # one wish, asked three times
    assert unanswered_requests(asked, []) == [(relay, dead, 1.0)]
    again = [*asked, NeighbourRequest(9.0, relay, dead)]
    assert unanswered_requests(again, []) == [(relay, dead, 1.0), (relay, dead, 9.0)]
    # Answered: the SYN follows, and that connection is the attempt already.
    assert unanswered_requests([NeighbourRequest(3.0, relay, mx)], [_conn(relay, mx, 3.001, 3.2)]) == []
    # Asked while a connection between the two went on (its FIN after the table was emptied), or by the
    # server answering it: about that connection.
    assert unanswered_requests([NeighbourRequest(3.0, relay, mx)], [_conn(relay, mx, 1.0, 3.05)]) == []
    assert unanswered_requests([NeighbourRequest(3.0, mx, relay)], [_conn(relay, mx, 2.999, 3.2)]) == []
    # A connection long before or after the wish does not explain it.
    assert unanswered_requests([NeighbourRequest(3.0, relay, mx)], [_conn(relay, mx, 0.5, 1.0),
                                                                    _conn(relay, mx, 9.0, 9.5)]) == [(relay, mx, 3.0)]
