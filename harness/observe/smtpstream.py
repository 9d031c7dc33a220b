"""SMTP sessions decoded from packet captures: the MTA-to-MTA hops the harness's client never sees.

Pure (no I/O): pcap bytes in, ``Transcript`` objects out, with the same ``Exchange`` fields the
harness's own client records, so a hop observed on the wire reads like a session the harness ran.

Pairing is by order, as a pipelining client does it (RFC 2920): every command gets exactly one reply,
in the order sent; Postfix's smtp client writes MAIL, RCPT... and DATA in one segment and reads the
replies afterwards. Client bytes are commands except the message after a 354 (up to CRLF.CRLF) and the
n bytes after ``BDAT n``. Nothing is invented: a command without a reply gets ``code=None`` and the
way the connection ended; after a 220 to STARTTLS the bytes are TLS and decoding stops, but the TLS
exchange says what the record layer shows of the handshake (harness.observe.tlsrecords). A client
that sends a command there instead of a ClientHello has started no TLS: the TLS exchange says it
failed, and its commands are decoded in clear.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from email.parser import BytesHeaderParser
from email.policy import compat32

from harness.observe import tlsrecords
from harness.observe.tcpflows import Connection, Stream, merge_connections, read_connections
from harness.smtp.client import parse_enhanced
from harness.smtp.transcript import PENDING_TEXT, TLS_ESTABLISHED, TLS_FAILED, Exchange, Transcript

__all__ = ["TLS_TEXT", "connections", "decode_connections", "decode_session", "decode_sessions", "merge_captures"]

TLS_TEXT = "TLS started: the rest of the session is encrypted"
NO_CLIENT_HELLO = "the client sent no ClientHello after the 220 and went on in clear"
# On one bridge a SYN-ACK comes within milliseconds; Linux resends an unanswered SYN after 1 s. A SYN
# younger than this when the capture was read is an attempt in progress, not one nobody answered.
SYN_ANSWER_S = 1.0
NOT_DECODED_TEXT = "capture started after the connection was opened: not decoded"
UNSOLICITED = "UNSOLICITED"  # a reply that came before any command could have asked for it

_KNOWN = {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "STARTTLS", "AUTH", "BDAT", "VRFY",
          "EXPN", "HELP", "ETRN", "XCLIENT", "XFORWARD"}
_BDAT = re.compile(rb"^BDAT\s+(\d+)(\s+LAST)?\s*$", re.IGNORECASE)
_END_OF_DATA = b"\r\n.\r\n"
# The longest line either side may send (RFC 5321 4.5.3.1.4-5 allow 512; servers send longer replies):
# past this without a line end the stream is not SMTP, and decoding stops instead of buffering it.
_MAX_LINE = 64 * 1024


def _capture_list(pcap: bytes | Iterable[bytes]) -> list[bytes]:
    if isinstance(pcap, bytes | bytearray | memoryview):
        return [bytes(pcap)]
    return [bytes(p) for p in pcap]


def connections(pcap: bytes | Iterable[bytes]) -> list[Connection]:
    """Every TCP connection or attempt in one capture or several (merged, each connection once)."""
    return merge_captures(_capture_list(pcap))


def merge_captures(pcaps: Sequence[bytes]) -> list[Connection]:
    """Connections of several captures; one seen in two captures (relay's and mx's) appears once."""
    return merge_connections([read_connections(p) for p in pcaps])


def decode_sessions(pcap: bytes | Iterable[bytes], *, names: Mapping[str, str], start_wall: float,
                    exclude_sources: Collection[str] = ()) -> list[Transcript]:
    """The SMTP sessions in one capture or several, one Transcript per TCP connection (or attempt).

    ``names`` maps address -> role (hops are "<client role>-><server role>"; an unknown address names
    itself). Connections opened from ``exclude_sources`` are left out (the harness's own client records
    its sessions itself). Sessions are numbered per hop from 1, in order of the connection's first
    packet. ``at_s`` is capture time minus ``start_wall`` (the wall clock when the scenario started).
    """
    return decode_connections(connections(pcap), names=names, start_wall=start_wall,
                              exclude_sources=exclude_sources)


def decode_connections(conns: Iterable[Connection], *, names: Mapping[str, str], start_wall: float,
                       exclude_sources: Collection[str] = (), read_wall: float | None = None) -> list[Transcript]:
    excluded = set(exclude_sources)
    numbers: dict[str, int] = {}
    transcripts = []
    for conn in sorted(conns, key=lambda c: c.first_ts):
        if conn.src in excluded:
            continue
        hop = f"{names.get(conn.src, conn.src)}->{names.get(conn.dst, conn.dst)}"
        numbers[hop] = numbers.get(hop, 0) + 1
        transcripts.append(decode_session(conn, hop=hop, session=numbers[hop], start_wall=start_wall,
                                          read_wall=read_wall))
    return transcripts


@dataclass(frozen=True)
class _Reply:
    code: int | None  # None: a line that is not an SMTP reply (the stream is out of step)
    lines: tuple[str, ...]
    ts: float


class _Reader:
    """Consumes one direction's bytes in order; each read also says when its last byte arrived."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.data = stream.data
        self.pos = 0
        self.last_content = b""  # the bytes of the last message (or BDAT chunk) read

    def _peek(self) -> tuple[bytes, int] | None:
        """The next complete line (without its line end) and where its LF is, without consuming it."""
        end = self.data.find(b"\n", self.pos, self.pos + _MAX_LINE)
        return None if end < 0 else (self.data[self.pos:end].rstrip(b"\r"), end)

    def line(self) -> tuple[bytes, float] | None:
        """The next complete line (without its line end), or None when no complete line is left."""
        got = self._peek()
        if got is None:
            return None
        raw, end = got
        self.pos = end + 1
        return raw, self.stream.ts_at(end)

    def next_command(self) -> str | None:
        """The verb of the next complete line, without consuming it; None when there is none."""
        got = self._peek()
        return None if got is None else _command_name(got[0].decode("utf-8", "replace"))

    def exact(self, n: int) -> float | None:
        """Skip ``n`` bytes (``last_content`` keeps them); the time the last one arrived, or None when
        fewer are left."""
        if len(self.data) - self.pos < n:
            self.pos = len(self.data)
            return None
        self.last_content = self.data[self.pos:self.pos + n]
        self.pos += n
        return self.stream.ts_at(self.pos - 1)

    def message(self) -> float | None:
        """Skip a DATA message up to and including CRLF.CRLF; its arrival time, or None if it never ended.

        The message starts right after the DATA line, so an empty message is just ".\\r\\n": look
        for the terminator with the preceding CRLF (the DATA line's) included.
        """
        end = self.data.find(_END_OF_DATA, self.pos - 2)
        if end < 0:
            self.last_content = self.data[self.pos:]
            self.pos = len(self.data)
            return None
        self.last_content = self.data[self.pos:end + 2]
        self.pos = end + len(_END_OF_DATA)
        return self.stream.ts_at(self.pos - 1)

    def reply(self) -> _Reply | None:
        """The next complete reply (all continuation lines), or None when none is complete."""
        start = self.pos
        lines: list[str] = []
        while True:
            got = self.line()
            if got is None:
                self.pos = start  # an incomplete reply is not a reply
                return None
            raw, ts = got
            text = raw.decode("utf-8", "replace")
            if len(raw) < 3 or not raw[:3].isdigit() or raw[3:4] not in (b"", b" ", b"-"):
                return _Reply(None, (*lines, text), ts)
            lines.append(text)
            if raw[3:4] != b"-":
                return _Reply(int(raw[:3]), tuple(lines), ts)


def content_message_id(content: bytes) -> str | None:
    """The Message-ID header of message content as sent (dot-stuffed or not: the header block is the
    same), or None. Only the header block is parsed."""
    head = content.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    value = BytesHeaderParser(policy=compat32).parsebytes(head + b"\r\n\r\n").get("Message-ID")
    return str(value).strip() or None if value is not None else None


def _reply_text(lines: Sequence[str]) -> str:
    # Like aiosmtplib (what the harness's client records): each line without "ddd-", stripped.
    return "\n".join(line[4:].strip(" \t") for line in lines)


def _command_name(line: str) -> str:
    verb = line.split(" ", 1)[0].upper()
    return verb if verb else "(empty line)"


def _shown(line: str) -> str:
    """The command line as recorded; AUTH arguments carry credentials and are masked."""
    parts = line.split(" ")
    if parts[0].upper() == "AUTH" and len(parts) > 2:
        return " ".join([*parts[:2], "***"])
    return line


class _Session:
    def __init__(self, conn: Connection, hop: str, session: int, start_wall: float) -> None:
        self.conn = conn
        self.hop = hop
        self.session = session
        self.start_wall = start_wall
        self.client = _Reader(conn.client)
        self.server = _Reader(conn.server)
        self.exchanges: list[Exchange] = []
        self.out_of_step = False  # an unreadable reply: nothing after it can be paired
        self.chunks = b""  # BDAT content of the current transaction

    def record(self, command: str, sent: str | None, reply: _Reply) -> None:
        text = _reply_text(reply.lines)
        if reply.code is None:
            text = f"unreadable reply: {reply.lines[-1]}"
        self.exchanges.append(Exchange(
            hop=self.hop, session=self.session, command=command, sent=sent, code=reply.code,
            enhanced=parse_enhanced(text) if reply.code is not None else None, text=text,
            lines=reply.lines, at_s=reply.ts - self.start_wall))

    def no_reply(self, command: str, sent: str | None, detail: str = "") -> None:
        conn = self.conn
        if conn.server.gap or conn.client.gap:
            text = "capture is missing packets of this connection"
        elif conn.end == "rst":
            text = "connection reset"
        elif conn.server.fin_ts is not None:
            text = "connection closed"
        elif conn.end == "fin":
            # Only the client closed its side: the server may still answer (Exim holds pipelined replies
            # until the client's FIN), so nothing is known yet.
            text = f"{PENDING_TEXT}: the client had closed its side, the server not yet, when the capture was read"
        else:
            text = f"{PENDING_TEXT}: the connection was still open when the capture was read"
        if detail:
            text = f"{text} ({detail})"
        ts = conn.end_ts if conn.end_ts is not None else conn.last_ts
        self.exchanges.append(Exchange(hop=self.hop, session=self.session, command=command, sent=sent,
                                       code=None, enhanced=None, text=text, at_s=ts - self.start_wall))

    def reply_to(self, command: str, sent: str | None, sent_ts: float) -> _Reply | None:
        """The reply to a command sent at ``sent_ts``, recording replies that came before it as unsolicited
        (a server's 421 on timeout, say): a reply cannot have been sent before its command arrived."""
        while True:
            reply = self.server.reply()
            if reply is None:
                self.no_reply(command, sent)
                return None
            if reply.ts < sent_ts and reply.code is not None:
                self.record(UNSOLICITED, None, reply)
                continue
            self.record(command, sent, reply)
            if reply.code is None:
                self.out_of_step = True
                return None
            return reply

    def run(self) -> list[Exchange]:
        conn = self.conn
        if conn.syn_only:
            self.exchanges.append(Exchange(
                hop=self.hop, session=self.session, command="CONNECT", sent=None, code=None, enhanced=None,
                text="no answer to the connection attempt", at_s=conn.last_ts - self.start_wall))
            return self.exchanges
        if conn.refused:
            ts = conn.end_ts if conn.end_ts is not None else conn.last_ts
            self.exchanges.append(Exchange(
                hop=self.hop, session=self.session, command="CONNECT", sent=None, code=None, enhanced=None,
                text="connection refused", at_s=ts - self.start_wall))
            return self.exchanges
        if conn.isn is None:
            self.exchanges.append(Exchange(
                hop=self.hop, session=self.session, command="CONNECT", sent=None, code=None, enhanced=None,
                text=NOT_DECODED_TEXT, at_s=conn.first_ts - self.start_wall))
            return self.exchanges
        greeting = self.reply_to("CONNECT", None, conn.first_ts)
        if greeting is None:
            return self.exchanges
        self.commands(greeting)
        # Replies nobody asked for after the last command (421 before closing an idle session).
        while not self.out_of_step and (reply := self.server.reply()) is not None and reply.code is not None:
            self.record(UNSOLICITED, None, reply)
        return self.exchanges

    def commands(self, last: _Reply) -> None:
        while True:
            got = self.client.line()
            if got is None:
                return  # nothing more, or a last line never finished (no server could have answered it)
            raw, ts = got
            line = raw.decode("utf-8", "replace")
            if last.code == 334:
                # RFC 4954: the line after a 334 challenge is the client's answer, not a command.
                command, sent = "AUTH", "***"
            else:
                command, sent = _command_name(line), _shown(line)
            bdat = _BDAT.match(raw)
            if bdat and last.code != 334:
                # RFC 3030: exactly n bytes of message follow the command line; none of them are commands.
                size = int(bdat.group(1))
                chunk_ts = self.client.exact(size) if size else ts
                if chunk_ts is None:
                    # The command went out but its chunk never arrived in full: unanswerable.
                    self.no_reply(command, sent, "before the whole chunk was sent")
                    return
                ts = chunk_ts
                self.chunks += self.client.last_content if size else b""
            elif command == "MAIL":
                self.chunks = b""
            reply = self.reply_to(command, sent, ts)
            if reply is None:
                return
            if bdat and bdat.group(2):
                self.tag_content(self.chunks)
            last = reply
            if command == "DATA" and reply.code == 354:
                if not self.end_of_data():
                    return
            elif command == "STARTTLS" and reply.code == 220:
                if self.client.next_command() in _KNOWN \
                        and tlsrecords.client_starts_tls(self.conn, self.client.pos) is False:
                    # The client sent no ClientHello but a command: what follows is SMTP in clear, and
                    # is decoded as such (a MAIL in clear must be seen, whatever the 220 promised).
                    self.exchanges.append(Exchange(
                        hop=self.hop, session=self.session, command="TLS", sent=None, code=None, enhanced=None,
                        text=f"{TLS_FAILED}: {NO_CLIENT_HELLO}", at_s=reply.ts - self.start_wall))
                    continue
                self.tls_handshake(reply)
                return

    def tls_handshake(self, ready: _Reply) -> None:
        """The TLS exchange after a 220 to STARTTLS: what the record layer of both directions shows of the
        handshake (harness.observe.tlsrecords), worded like the harness's client's; TLS_TEXT (at the 220's
        time) while undecided or when the bytes are not TLS."""
        seen = tlsrecords.handshake(self.conn, self.client.pos, self.server.pos)
        text, ts = TLS_TEXT, ready.ts
        if seen.outcome == "established" and seen.ts is not None:
            text, ts = f"{TLS_ESTABLISHED}: {seen.version} {seen.cipher} (seen on the wire)", seen.ts
        elif seen.outcome == "failed" and seen.ts is not None:
            text, ts = f"{TLS_FAILED}: {seen.detail}", seen.ts
        self.exchanges.append(Exchange(hop=self.hop, session=self.session, command="TLS", sent=None, code=None,
                                       enhanced=None, text=text, at_s=ts - self.start_wall))

    def end_of_data(self) -> bool:
        """The message and the reply to its final dot; False when the session cannot go on."""
        ts = self.client.message()
        if ts is None:
            # The message never ended: no final dot was sent, so no reply can be missing; the
            # exchange only says how the connection ended (sent=None: nothing was sent).
            self.no_reply("END-OF-DATA", None, "before the final dot")
            self.tag_content(self.client.last_content)
            return False
        replied = self.reply_to("END-OF-DATA", ".", ts) is not None
        self.tag_content(self.client.last_content)
        return replied

    def tag_content(self, content: bytes) -> None:
        """The reply just recorded was about ``content``: note its Message-ID on that exchange."""
        message_id = content_message_id(content)
        if message_id and self.exchanges:
            self.exchanges[-1] = replace(self.exchanges[-1], message_id=message_id)


def _attempt_in_progress(conn: Connection, read_wall: float | None) -> bool:
    """A SYN sent so recently that its SYN-ACK may still come (``read_wall``: when the capture was read;
    None: a finished capture, e.g. a recorded one)."""
    return conn.syn_only and read_wall is not None and read_wall - conn.last_ts < SYN_ANSWER_S


def decode_session(conn: Connection, *, hop: str, session: int, start_wall: float,
                   read_wall: float | None = None) -> Transcript:
    """One connection's SMTP exchanges."""
    if _attempt_in_progress(conn, read_wall):
        pending = Exchange(hop=hop, session=session, command="CONNECT", sent=None, code=None, enhanced=None,
                           text=f"{PENDING_TEXT}: the connection attempt is in progress",
                           at_s=conn.first_ts - start_wall)
        return Transcript(hop=hop, session=session, exchanges=[pending], closed=False)
    # Over for the server too: reset, refused, never answered, or the server closed its side. A client's
    # FIN alone does not end what the server still has to say.
    closed = conn.end == "rst" or conn.syn_only or conn.refused or conn.server.fin_ts is not None
    return Transcript(hop=hop, session=session, exchanges=_Session(conn, hop, session, start_wall).run(),
                      closed=closed)
