"""What a capture shows of a TLS handshake after STARTTLS, read from the TLS record layer (pure, no I/O).

A hop's session is encrypted after the 220 to STARTTLS, so the capture decoder cannot read it; but the
record layer stays in clear (RFC 8446 5.1, RFC 5246 6.2: type, version, length, then the fragment)
and so do the ClientHello, the ServerHello and alerts sent before a side switched to encryption. That
is enough to say, like the harness's own client does of its sessions, whether the handshake was
established (with the negotiated version and cipher suite) or failed (with the alert and who sent it),
for hops the harness only watches.

The rule, from what the wire reliably shows (both directions, from the byte after STARTTLS / its 220):

* established, TLS 1.2 and older: both sides sent ChangeCipherSpec, and then the client sent an
  application_data record. A server's CCS (and the Finished after it) proves it accepted the client's
  Finished; a client sends data only after checking the server's Finished (no False Start in MTAs'
  TLS libraries), so its first data record is the point where both sides are done.
* established, TLS 1.3 (everything after the ServerHello is application_data on the wire): after the
  ServerHello the client sent two encrypted records longer than a bare alert (its Finished, which it
  sends only once it accepted the server's flight, then its first data, EHLO), and the server sent
  one longer than a bare alert after the client's Finished (a session ticket or its reply: the server
  sends either only after it accepted the client's Finished, where it would send an alert instead).
  A bare encrypted alert is 2 bytes + content type + a 16-byte AEAD tag = 19 bytes; an SMTP line
  cannot be that short, so records of that size never count as data.
* failed: an alert before that point. A plaintext alert (2 bytes) names itself; in TLS 1.2 one sent
  after the sender's CCS is encrypted (an alert record of another length) and only its sender is known.
  Before TLS 1.3 a warning (level 1) other than close_notify does not end a handshake (an old server's
  unrecognized_name warning, say) and is passed over. In TLS 1.3 alerts after the ServerHello are
  encrypted and look like data: such a failure shows as the connection ending (FIN or RST) before the
  point above; when the handshake visibly completed and the client still closed without sending data
  (Postfix checks the certificate after the handshake and hangs up), the text says so.
* undecided: neither yet, the connection still open (the capture may be read mid-handshake), or the
  bytes are not TLS (the client's first record is not a ClientHello, the server's neither a ServerHello
  nor an alert), or bytes are missing from the capture or unreadable before anything was decided.

Nothing here raises on garbage: a header that cannot be a TLS record ends parsing there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from harness.observe.tcpflows import Connection, Stream

__all__ = ["ALERT", "ALERTS", "ALERT_SIZED", "APPLICATION_DATA", "CHANGE_CIPHER_SPEC", "CIPHER_SUITES", "HANDSHAKE",
           "Handshake", "ParsedRecords", "Record", "ServerHello", "handshake", "parse_records", "server_hello",
           "suite_name", "version_name"]

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
_CONTENT_TYPES = (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA)
_CLIENT_HELLO, _SERVER_HELLO = 1, 2
_SUPPORTED_VERSIONS = 0x002B
_TLS13 = 0x0304
_HEADER = 5
# RFC 5246 6.2.3: a TLSCiphertext fragment is at most 2^14 + 2048 bytes (TLS 1.3 allows less).
_MAX_FRAGMENT = 2**14 + 2048
# An encrypted record this long or shorter may be a bare alert: 2 bytes, the inner content type (TLS
# 1.3) and a 16-byte AEAD tag. Neither a Finished nor an SMTP line fits in it.
ALERT_SIZED = 2 + 1 + 16
# RFC 8446 4.1.3: a ServerHello with this random is a HelloRetryRequest; the real one follows.
_HELLO_RETRY_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

_VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
# IANA names (https://www.iana.org/assignments/tls-parameters) of the suites MTAs negotiate.
CIPHER_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
}
# AlertDescription (RFC 8446 6, RFC 5246 7.2 for the ones TLS 1.3 retired).
ALERTS = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 21: "decryption_failed",
    22: "record_overflow", 30: "decompression_failure", 40: "handshake_failure", 41: "no_certificate",
    42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked", 45: "certificate_expired",
    46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied",
    50: "decode_error", 51: "decrypt_error", 60: "export_restriction", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
    100: "no_renegotiation", 109: "missing_extension", 110: "unsupported_extension",
    111: "certificate_unobtainable", 112: "unrecognized_name", 113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value", 115: "unknown_psk_identity", 116: "certificate_required",
    120: "no_application_protocol",
}
_WARNING, _CLOSE_NOTIFY = 1, 0

Side = Literal["client", "server"]


def version_name(version: int) -> str:
    """Python ssl's name of a protocol version ("TLSv1.3"), else its number ("0x7f1c")."""
    return _VERSIONS.get(version, f"0x{version:04x}")


def suite_name(suite: int) -> str:
    """The IANA name of a cipher suite, else its number ("0x1305")."""
    return CIPHER_SUITES.get(suite, f"0x{suite:04x}")


def _plausible_header(data: bytes, at: int) -> bool:
    """The (possibly partial) 5-byte header at ``at`` could begin a TLS record."""
    head = data[at:at + _HEADER]
    if head[:1] and head[0] not in _CONTENT_TYPES:
        return False
    if head[1:2] and head[1] != 3:
        return False
    if head[2:3] and head[2] > 4:
        return False
    return len(head) < _HEADER or int.from_bytes(head[3:5], "big") <= _MAX_FRAGMENT


@dataclass(frozen=True)
class Record:
    """One complete TLS record: ``start`` is its header's offset in the stream, ``ts`` the capture time of
    its last byte (when it could be read)."""

    content_type: int
    version: int
    start: int
    fragment: bytes
    ts: float = 0.0

    @property
    def length(self) -> int:
        return len(self.fragment)


@dataclass(frozen=True)
class ParsedRecords:
    """The complete records of one direction from an offset; ``garbled``: parsing stopped at bytes that
    cannot be a record header (what follows is not TLS); an incomplete last record is left out."""

    records: tuple[Record, ...]
    garbled: bool
    end: int  # offset just after the last complete record


def parse_records(data: bytes, start: int = 0, ts_at: Callable[[int], float] | None = None) -> ParsedRecords:
    """The TLS records in ``data`` from ``start``, stopping cleanly at an incomplete one."""
    records: list[Record] = []
    pos = max(start, 0)
    while pos < len(data):
        if not _plausible_header(data, pos):
            return ParsedRecords(tuple(records), True, pos)
        if len(data) - pos < _HEADER:
            break
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        end = pos + _HEADER + length
        if end > len(data):
            break
        ts = ts_at(end - 1) if ts_at is not None else 0.0
        records.append(Record(data[pos], int.from_bytes(data[pos + 1:pos + 3], "big"), pos,
                              data[pos + _HEADER:end], ts))
        pos = end
    return ParsedRecords(tuple(records), False, pos)


def _opening(data: bytes, start: int, side: Side) -> bool | None:
    """Whether the bytes from ``start`` begin as this side's first TLS record; None: too few to tell.

    The client's first record is a handshake record holding a ClientHello; the server's a handshake
    record holding a ServerHello (or HelloRetryRequest), or an alert refusing the ClientHello."""
    if start >= len(data):
        return None
    if not _plausible_header(data, start):
        return False
    content_type = data[start]
    if content_type == HANDSHAKE:
        if len(data) <= start + _HEADER:
            return None
        return data[start + _HEADER] == (_CLIENT_HELLO if side == "client" else _SERVER_HELLO)
    return side == "server" and content_type == ALERT


def client_starts_tls(conn: Connection, client_from: int) -> bool | None:
    """Whether the client's bytes from ``client_from`` (after a 220 to its STARTTLS) begin a ClientHello;
    False: it went on with something else (commands in clear); None: too few bytes to tell yet."""
    return _opening(conn.client.data, client_from, "client")


@dataclass(frozen=True)
class ServerHello:
    version: int  # negotiated: supported_versions' choice when present, else the legacy field
    cipher_suite: int
    ts: float  # when the record completing it was captured

    @property
    def version_name(self) -> str:
        return version_name(self.version)

    @property
    def suite_name(self) -> str:
        return suite_name(self.cipher_suite)


def _parse_server_hello(body: bytes, ts: float) -> tuple[ServerHello, bool] | None:
    """The ServerHello in a handshake message body and whether it is a HelloRetryRequest; None if
    malformed. RFC 8446 4.1.3 / RFC 5246 7.4.1.3: version(2) random(32) session_id<0..32>
    cipher_suite(2) compression(1) extensions<0..2^16-1> (absent in old servers' hellos)."""
    if len(body) < 35:
        return None
    version = int.from_bytes(body[0:2], "big")
    random = body[2:34]
    pos = 35 + body[34]
    if len(body) < pos + 3:
        return None
    suite = int.from_bytes(body[pos:pos + 2], "big")
    pos += 3
    if len(body) >= pos + 2:
        end = min(pos + 2 + int.from_bytes(body[pos:pos + 2], "big"), len(body))
        pos += 2
        while pos + 4 <= end:
            ext_type = int.from_bytes(body[pos:pos + 2], "big")
            ext = body[pos + 4:pos + 4 + int.from_bytes(body[pos + 2:pos + 4], "big")]
            pos += 4 + len(ext)
            if ext_type == _SUPPORTED_VERSIONS and len(ext) == 2:
                version = int.from_bytes(ext, "big")
    return ServerHello(version, suite, ts), random == _HELLO_RETRY_RANDOM


def server_hello(records: Sequence[Record]) -> ServerHello | None:
    """The ServerHello among the server's first handshake records (after a HelloRetryRequest, the one
    that follows it); None when none is complete (yet) or it is malformed.

    Handshake messages may span records and records may hold several: the fragments are joined. A
    ChangeCipherSpec ends the plaintext handshake (TLS 1.2) unless a HelloRetryRequest came first (TLS
    1.3 middlebox compatibility sends one after it); alerts and application data end it too."""
    joined = b""
    pos = 0
    retried = False
    for record in records:
        if record.content_type == CHANGE_CIPHER_SPEC and retried:
            continue
        if record.content_type != HANDSHAKE:
            return None
        joined += record.fragment
        while len(joined) - pos >= 4:
            length = int.from_bytes(joined[pos + 1:pos + 4], "big")
            if len(joined) - pos - 4 < length:
                break
            msg_type, body = joined[pos], joined[pos + 4:pos + 4 + length]
            pos += 4 + length
            if msg_type != _SERVER_HELLO:
                continue
            parsed = _parse_server_hello(body, record.ts)
            if parsed is None:
                return None
            hello, retry = parsed
            if not retry:
                return hello
            retried = True
    return None


Outcome = Literal["established", "failed", "undecided"]


@dataclass(frozen=True)
class Handshake:
    """What the capture shows of one handshake. ``detail``: for failed, what was seen ("the server's
    alert handshake_failure (40)"); for undecided, why. ``ts``: capture time of what decided it."""

    outcome: Outcome
    detail: str = ""
    ts: float | None = None
    hello: ServerHello | None = None

    @property
    def version(self) -> str | None:
        return self.hello.version_name if self.hello else None

    @property
    def cipher(self) -> str | None:
        return self.hello.suite_name if self.hello else None


def _first_alert(records: Sequence[Record], side: Side, tls13: bool) -> tuple[float, str] | None:
    """The first alert of one side that ends a handshake: its time and how to say it."""
    for record in records:
        if record.content_type != ALERT:
            continue
        if record.length != 2:
            return record.ts, f"the {side}'s alert (encrypted: its name is not on the wire)"
        level, code = record.fragment[0], record.fragment[1]
        if level == _WARNING and code != _CLOSE_NOTIFY and not tls13:
            continue
        return record.ts, f"the {side}'s alert {ALERTS.get(code, 'unknown')} ({code})"
    return None


def _not_bare_alert(records: Sequence[Record], after: float) -> list[Record]:
    return [r for r in records if r.content_type == APPLICATION_DATA and r.length > ALERT_SIZED and r.ts > after]


def _established_tls13(client: Sequence[Record], server: Sequence[Record], hello: ServerHello
                       ) -> tuple[float | None, bool]:
    """When the TLS 1.3 rule was met (None: not yet), and whether the handshake itself visibly completed
    (the client's Finished and the server's answer to it)."""
    sent = _not_bare_alert(client, hello.ts)
    if not sent:
        return None, False
    answers = _not_bare_alert(server, sent[0].ts)
    if not answers:
        return None, False
    return (max(sent[1].ts, answers[0].ts) if len(sent) > 1 else None), True


def _established_tls12(client: Sequence[Record], server: Sequence[Record]) -> tuple[float | None, bool]:
    """When the TLS 1.2 rule was met (None: not yet), and whether both sides sent ChangeCipherSpec."""
    server_ccs = next((r for r in server if r.content_type == CHANGE_CIPHER_SPEC), None)
    client_ccs = next((i for i, r in enumerate(client) if r.content_type == CHANGE_CIPHER_SPEC), None)
    if server_ccs is None or client_ccs is None:
        return None, False
    data = next((r for r in client[client_ccs + 1:]
                 if r.content_type == APPLICATION_DATA and r.ts > server_ccs.ts), None)
    return (data.ts if data is not None else None), True


def _parsed(stream: Stream, start: int) -> ParsedRecords:
    return parse_records(stream.data, start, stream.ts_at)


def handshake(conn: Connection, client_from: int, server_from: int) -> Handshake:
    """The handshake on ``conn`` whose client bytes start at ``client_from`` (after the STARTTLS line)
    and server bytes at ``server_from`` (after the 220 to it). See the module docstring for the rule."""
    openings = (_opening(conn.client.data, client_from, "client"), _opening(conn.server.data, server_from, "server"))
    if False in openings:
        return Handshake("undecided", "not TLS")
    client, server = _parsed(conn.client, client_from), _parsed(conn.server, server_from)
    hello = server_hello(server.records)
    tls13 = hello is not None and hello.version >= _TLS13
    decided: list[tuple[float, Outcome, str]] = []
    sides: tuple[tuple[Sequence[Record], Side], ...] = ((client.records, "client"), (server.records, "server"))
    for records, side in sides:
        alert = _first_alert(records, side, tls13)
        if alert is not None:
            decided.append((alert[0], "failed", alert[1]))
    completed = False
    if hello is not None:
        at, completed = (_established_tls13(client.records, server.records, hello) if tls13
                         else _established_tls12(client.records, server.records))
        if at is not None:
            decided.append((at, "established", ""))
    if decided:
        # Whichever came first: an alert after the handshake (a close_notify) does not undo it.
        ts, outcome, detail = min(decided, key=lambda d: (d[0], d[1] != "failed"))
        return Handshake(outcome, detail, ts, hello)
    if client.garbled or server.garbled or conn.client.gap or conn.server.gap:
        return Handshake("undecided", "bytes missing from the capture or unreadable", None, hello)
    if conn.end in ("rst", "fin") and conn.end_ts is not None:
        detail = ("the connection closed after the handshake, before the client sent anything over TLS"
                  if completed else "the connection closed during the handshake")
        return Handshake("failed", detail, conn.end_ts, hello)
    return Handshake("undecided", "the handshake had not ended when the capture was read", None, hello)
