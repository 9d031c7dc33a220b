"""The TLS handshake after STARTTLS as a capture shows it (harness.observe.tlsrecords, and the TLS exchange
of harness.observe.smtpstream), on real TLS bytes: Python's ssl runs a client and a server in one
process over memory BIOs with certificates from harness.tls.ca, each direction's bytes are recorded in
order, and they become TCP segments after an SMTP STARTTLS exchange, as the synthetic conversations of
test_capture_decode are built. No Docker, no sockets; no hand-written handshakes."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.observe.smtpstream import NO_CLIENT_HELLO, TLS_TEXT
from harness.observe.tcpflows import Chunk, Connection, Stream
from harness.observe.tlsrecords import (
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    handshake,
    parse_records,
    server_hello,
)
from harness.smtp.transcript import TLS_ESTABLISHED, TLS_FAILED, Exchange, outcome_word
from harness.tls.ca import CertificateAuthority
from tests.unit.test_capture_decode import commands, conversation, synthetic

HOSTNAME = "mx.example.test"
# The SMTP part of every conversation: greeting, EHLO, STARTTLS and its 220 (5 turns).
SMTP = [("s", b"220 mx.example.test ESMTP\r\n"), ("c", b"EHLO relay.example.test\r\n"),
        ("s", b"250-mx.example.test\r\n250 STARTTLS\r\n"), ("c", b"STARTTLS\r\n"),
        ("s", b"220 2.0.0 Ready to start TLS\r\n")]
EHLO, EHLO_REPLY = b"EHLO relay.example.test\r\n", b"250-mx.example.test\r\n250 PIPELINING\r\n"
T0 = 100.0  # conversation()'s first segment is at T0 + 0.001, each next one 0.001 later; start_wall is T0


def turn_time(index: int) -> float:
    """at_s of the ``index``-th turn (0-based, SMTP turns included): 3 TCP handshake segments come first."""
    return 0.001 * (3 + index + 1)


READY_AT = turn_time(len(SMTP) - 1)  # the 220 to STARTTLS


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    other: CertificateAuthority  # a CA the server's certificate does not chain to
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, other = CertificateAuthority("run CA"), CertificateAuthority("other CA")
    credentials = ca.issue(HOSTNAME)
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(credentials.cert_pem)
    (directory / "key.pem").write_bytes(credentials.key_pem)
    return Pki(ca, other, directory / "cert.pem", directory / "key.pem")


def server_context(pki: Pki, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    if maximum is not None:
        context.maximum_version = maximum
    return context


def client_context(trusted: CertificateAuthority, minimum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=trusted.cert_pem.decode())
    if minimum is not None:
        context.minimum_version = minimum
    return context


@dataclass
class Wire:
    """A TLS client and server talking over memory BIOs; ``turns`` is what crossed, in order."""

    client: ssl.SSLObject
    server: ssl.SSLObject
    bios: dict[str, tuple[ssl.MemoryBIO, ssl.MemoryBIO]]  # side -> (incoming, outgoing)
    turns: list[tuple[str, bytes]] = field(default_factory=list)
    errors: dict[str, ssl.SSLError] = field(default_factory=dict)

    @classmethod
    def open(cls, server: ssl.SSLContext, client: ssl.SSLContext) -> Wire:
        bios = {side: (ssl.MemoryBIO(), ssl.MemoryBIO()) for side in "cs"}
        return cls(client.wrap_bio(*bios["c"], server_hostname=HOSTNAME),
                   server.wrap_bio(*bios["s"], server_side=True), bios)

    def flush(self, side: str) -> None:
        """What ``side`` wrote goes over the wire to the other side, as one turn."""
        data = self.bios[side][1].read()
        if data:
            self.turns.append((side, data))
            self.bios["s" if side == "c" else "c"][0].write(data)

    def handshake(self) -> bool:
        """Both sides' handshakes, flight by flight, until both are done or one side failed."""
        done: set[str] = set()
        for _ in range(10):
            for side, tls in (("c", self.client), ("s", self.server)):
                if side not in done and side not in self.errors:
                    try:
                        tls.do_handshake()
                        done.add(side)
                    except ssl.SSLWantReadError:
                        pass
                    except ssl.SSLError as exc:
                        self.errors[side] = exc
                self.flush(side)
            if self.errors or done == {"c", "s"}:
                break
        return done == {"c", "s"}

    def ehlo(self) -> None:
        """The client's first command over TLS and the server's reply."""
        self.client.write(EHLO)
        self.flush("c")
        assert self.server.read(4096) == EHLO
        self.server.write(EHLO_REPLY)
        self.flush("s")
        assert self.client.read(4096) == EHLO_REPLY


def cipher(tls: ssl.SSLObject) -> str:
    """The cipher suite the endpoint says it negotiated."""
    negotiated = tls.cipher()
    assert negotiated is not None
    return negotiated[0]


def tls_exchange(tls_turns: list[tuple[str, bytes]], end: str = "fin") -> Exchange:
    """The TLS exchange of the hop that ran SMTP up to STARTTLS, then ``tls_turns`` (``end``: fin, rst,
    or open: still open when the capture was read)."""
    sessions = synthetic(conversation([*SMTP, *tls_turns], end=end))
    # SMTP decoding stops there (a server's plain-text reply after it would be UNSOLICITED, as before).
    assert commands(sessions)[:4] == [("CONNECT", 220), ("EHLO", 250), ("STARTTLS", 220), ("TLS", None)]
    return sessions[0].exchanges[3]


def index_of(turns: list[tuple[str, bytes]], side: str, data_after: int = 0) -> int:
    """The conversation index (SMTP turns included) of ``side``'s first turn at or after TLS turn
    ``data_after``."""
    return len(SMTP) + next(i for i, (s, _) in enumerate(turns) if s == side and i >= data_after)


# -- established -----------------------------------------------------------------------------------

def test_tls13_established_names_the_version_and_cipher_the_endpoints_agreed(pki: Pki) -> None:
    wire = Wire.open(server_context(pki), client_context(pki.ca))
    assert wire.handshake()
    before_data = len(wire.turns)
    wire.ehlo()
    assert wire.client.version() == "TLSv1.3"
    exchange = tls_exchange(wire.turns)
    assert exchange.text == f"{TLS_ESTABLISHED}: TLSv1.3 {cipher(wire.client)} (seen on the wire)"
    assert exchange.text == f"{TLS_ESTABLISHED}: TLSv1.3 TLS_AES_256_GCM_SHA384 (seen on the wire)"
    assert outcome_word(exchange) == "established"
    # Decided by the client's EHLO: its Finished came before, the server's session tickets after it.
    assert exchange.at_s == pytest.approx(turn_time(index_of(wire.turns, "c", before_data)))


def test_tls12_established(pki: Pki) -> None:
    wire = Wire.open(server_context(pki, ssl.TLSVersion.TLSv1_2), client_context(pki.ca))
    assert wire.handshake()
    before_data = len(wire.turns)
    wire.ehlo()
    assert (wire.client.version(), cipher(wire.client)) == ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384")
    exchange = tls_exchange(wire.turns)
    # IANA's name, where Python's ssl says OpenSSL's for TLS 1.2 suites.
    assert exchange.text == f"{TLS_ESTABLISHED}: TLSv1.2 TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 (seen on the wire)"
    assert exchange.at_s == pytest.approx(turn_time(index_of(wire.turns, "c", before_data)))


def test_tls13_after_a_hello_retry_request(pki: Pki) -> None:
    # The client offers an X25519 key share; a server that only takes P-256 asks again (RFC 8446 4.1.4).
    server = server_context(pki)
    server.set_ecdh_curve("prime256v1")
    wire = Wire.open(server, client_context(pki.ca))
    assert wire.handshake()
    wire.ehlo()
    server_turns = [data for side, data in wire.turns if side == "s"]
    first = parse_records(server_turns[0]).records
    # A HelloRetryRequest is a ServerHello with a fixed random (RFC 8446 4.1.3): not the one that counts.
    assert first[0].content_type == HANDSHAKE and first[0].fragment[0] == 2
    assert first[0].fragment[6:38].hex().startswith("cf21ad74e59a6111") and server_hello(first) is None
    exchange = tls_exchange(wire.turns)
    assert exchange.text == f"{TLS_ESTABLISHED}: TLSv1.3 {cipher(wire.client)} (seen on the wire)"


def test_established_is_a_client_that_used_the_session_and_a_server_that_answered(pki: Pki) -> None:
    wire = Wire.open(server_context(pki), client_context(pki.ca))
    assert wire.handshake()
    # ClientHello; ServerHello + encrypted flight; the client's CCS + Finished; the server's tickets.
    assert [side for side, _ in wire.turns] == ["c", "s", "c", "s"]
    hello, flight, finished, tickets = wire.turns
    # Read while the handshake runs: nothing decided, and the exchange says TLS started, at the 220.
    for cut in (0, 1, 2, 3, 4):
        exchange = tls_exchange(wire.turns[:cut], end="open")
        assert exchange.text == TLS_TEXT and exchange.at_s == pytest.approx(READY_AT)
        assert outcome_word(exchange) == "started"
    wire.client.write(EHLO)
    wire.flush("c")
    ehlo = wire.turns[-1]
    # The client's EHLO after its Finished, and the server's tickets after that Finished: established
    # when the later of the two was seen, whichever it is.
    for turns, decided_by in (([hello, flight, finished, tickets, ehlo], 4),
                              ([hello, flight, finished, ehlo, tickets], 4)):
        exchange = tls_exchange(turns, end="open")
        assert exchange.text.startswith(f"{TLS_ESTABLISHED}: TLSv1.3 ")
        assert exchange.at_s == pytest.approx(turn_time(len(SMTP) + decided_by))
    # The EHLO without anything from the server after the client's Finished: not yet.
    assert tls_exchange([hello, flight, finished, ehlo], end="open").text == TLS_TEXT
    assert tls_exchange([hello, flight, finished, ehlo], end="fin").text == (
        f"{TLS_FAILED}: the connection closed during the handshake")


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_a_client_that_hangs_up_after_the_handshake_failed(pki: Pki, maximum: ssl.TLSVersion | None) -> None:
    # The handshake completed but the client sent no command: Postfix checks the certificate after
    # the handshake and, when it is not good enough for the hop's TLS level, says goodbye and closes.
    wire = Wire.open(server_context(pki, maximum), client_context(pki.ca))
    assert wire.handshake()
    assert tls_exchange(wire.turns, end="open").text == TLS_TEXT
    closed = tls_exchange(wire.turns, end="fin")
    assert closed.text == (f"{TLS_FAILED}: the connection closed after the handshake, before the client sent "
                           "anything over TLS")
    assert outcome_word(closed) == "failed"
    # With a close_notify first: in TLS 1.3 an encrypted alert is an application_data record of an
    # alert's size, in TLS 1.2 an alert record whose content is encrypted.
    with pytest.raises(ssl.SSLWantReadError):
        wire.client.unwrap()  # sends close_notify, then waits for the server's
    wire.flush("c")
    (close_notify,) = parse_records(wire.turns[-1][1]).records
    notified = tls_exchange(wire.turns, end="fin")
    if maximum is None:
        assert (close_notify.content_type, close_notify.length) == (APPLICATION_DATA, 19)
        assert notified.text == closed.text
    else:
        assert close_notify.content_type == ALERT and close_notify.length > 2
        assert notified.text == f"{TLS_FAILED}: the client's alert (encrypted: its name is not on the wire)"
        assert notified.at_s == pytest.approx(turn_time(len(SMTP) + len(wire.turns) - 1))
    # After a command and its reply, the same close_notify ends an established session.
    used = Wire.open(server_context(pki, maximum), client_context(pki.ca))
    assert used.handshake()
    used.ehlo()
    with pytest.raises(ssl.SSLWantReadError):
        used.client.unwrap()
    used.flush("c")
    assert tls_exchange(used.turns, end="fin").text.startswith(f"{TLS_ESTABLISHED}: {used.client.version()} ")


# -- failed ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_client_rejects_the_certificate(pki: Pki, maximum: ssl.TLSVersion | None) -> None:
    wire = Wire.open(server_context(pki, maximum), client_context(pki.other))
    assert not wire.handshake()
    assert isinstance(wire.errors["c"], ssl.SSLCertVerificationError)
    assert wire.errors["s"].reason == "TLSV1_ALERT_UNKNOWN_CA"
    # What the wire shows, in TLS 1.3 as in 1.2: OpenSSL's client sends the alert before it switched
    # its own writes to the handshake keys (it does at its Finished), so the alert is in clear.
    last_side, last = wire.turns[-1]
    assert last_side == "c" and [(r.content_type, r.fragment) for r in parse_records(last).records] == [
        (ALERT, b"\x02\x30")]
    exchange = tls_exchange(wire.turns)
    assert exchange.text == f"{TLS_FAILED}: the client's alert unknown_ca (48)"
    assert outcome_word(exchange) == "failed"
    assert exchange.at_s == pytest.approx(turn_time(len(SMTP) + len(wire.turns) - 1))
    # The alert decides it even while the connection is still open.
    assert tls_exchange(wire.turns, end="open").text == exchange.text


def test_version_mismatch_is_the_servers_protocol_version_alert(pki: Pki) -> None:
    wire = Wire.open(server_context(pki, ssl.TLSVersion.TLSv1_2), client_context(pki.ca, ssl.TLSVersion.TLSv1_3))
    assert not wire.handshake()
    assert [side for side, _ in wire.turns] == ["c", "s"]
    exchange = tls_exchange(wire.turns)
    assert exchange.text == f"{TLS_FAILED}: the server's alert protocol_version (70)"
    assert exchange.at_s == pytest.approx(turn_time(len(SMTP) + 1))


@pytest.mark.parametrize("end", ["fin", "rst"])
def test_server_closes_during_the_handshake(pki: Pki, end: str) -> None:
    wire = Wire.open(server_context(pki), client_context(pki.ca))
    assert wire.handshake()
    for cut in (0, 1, 2):  # nothing after 220; the ClientHello only; the server's first flight too
        exchange = tls_exchange(wire.turns[:cut], end=end)
        assert exchange.text == f"{TLS_FAILED}: the connection closed during the handshake"
        # The time the connection ended: the first FIN (the client's, in conversation()) or the RST.
        assert exchange.at_s == pytest.approx(turn_time(len(SMTP) + cut))


# -- not TLS, or not all of it ---------------------------------------------------------------------

@pytest.mark.parametrize("turns", [
    [("c", bytes(range(256)))],
    [("c", b"\x16\x03\x01\x00\x10QUIT\r\n")],  # a record header, but no ClientHello in it
], ids=["binary", "not-a-client-hello"])
@pytest.mark.parametrize("end", ["fin", "open"])
def test_bytes_that_are_not_tls_say_tls_started(turns: list[tuple[str, bytes]], end: str) -> None:
    exchange = tls_exchange(turns, end=end)
    assert exchange.text == TLS_TEXT and exchange.at_s == pytest.approx(READY_AT)


@pytest.mark.parametrize("end", ["fin", "open"])
def test_a_command_instead_of_a_client_hello_is_no_tls_at_all(end: str) -> None:
    exchange = tls_exchange([("c", b"EHLO relay.example.test\r\n"),
                             ("s", b"503 5.5.1 Error: send HELO/EHLO first\r\n")], end=end)
    assert exchange.text == f"{TLS_FAILED}: {NO_CLIENT_HELLO}" and exchange.at_s == pytest.approx(READY_AT)


def test_a_server_answering_in_plain_text_is_not_tls(pki: Pki) -> None:
    wire = Wire.open(server_context(pki), client_context(pki.ca))
    wire.handshake()
    client_hello = wire.turns[0]
    exchange = tls_exchange([client_hello, ("s", b"421 4.3.0 TLS not available\r\n")])
    assert exchange.text == TLS_TEXT


def test_a_truncated_record_is_not_an_error(pki: Pki) -> None:
    wire = Wire.open(server_context(pki), client_context(pki.ca))
    assert wire.handshake()
    client_hello, (side, flight) = wire.turns[0], wire.turns[1]
    assert side == "s"
    records = parse_records(flight).records
    assert [r.content_type for r in records[:2]] == [HANDSHAKE, CHANGE_CIPHER_SPEC]
    assert all(r.content_type == APPLICATION_DATA for r in records[2:])
    for cut in (3, 5, 50, len(flight) - 1):
        parsed = parse_records(flight[:cut])
        assert not parsed.garbled and all(r.start + 5 + r.length <= cut for r in parsed.records)
        assert tls_exchange([client_hello, ("s", flight[:cut])], end="open").text == TLS_TEXT
        closed = tls_exchange([client_hello, ("s", flight[:cut])], end="fin")
        assert closed.text == f"{TLS_FAILED}: the connection closed during the handshake"
    # The ServerHello is read as soon as its record is complete.
    hello = server_hello(parse_records(flight[:records[1].start]).records)
    assert hello is not None and (hello.version_name, hello.suite_name) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")


def test_missing_bytes_leave_it_undecided(pki: Pki) -> None:
    wire = Wire.open(server_context(pki), client_context(pki.ca))
    assert wire.handshake()
    conn = connection(b"".join(d for s, d in wire.turns if s == "c")[:100],
                      b"".join(d for s, d in wire.turns if s == "s"), end="fin", client_gap=True)
    seen = handshake(conn, 0, 0)
    assert seen.outcome == "undecided" and seen.hello is not None


# -- never raises ----------------------------------------------------------------------------------

def connection(client: bytes, server: bytes, *, end: str = "open", client_gap: bool = False) -> Connection:
    """A connection whose streams are exactly these bytes (client at 1.0, server at 2.0)."""
    return Connection(src="10.9.0.5", sport=40000, dst="10.9.0.25", dport=25, first_ts=0.5, last_ts=3.0,
                      isn=1, syn_only=False, refused=False, established=True, end=end,
                      end_ts=3.0 if end != "open" else None,
                      client=Stream((Chunk(1.0, client),) if client else (), 3.0 if end == "fin" else None,
                                    client_gap),
                      server=Stream((Chunk(2.0, server),) if server else (), None), packets=2)


# Sequences of records with any content type, version and length (often lying about the length),
# so that the parser meets both plausible and implausible headers, hellos and alerts.
_record = st.builds(
    lambda content_type, version, body, lie: bytes([content_type, 3, version])
    + max(0, len(body) + lie).to_bytes(2, "big") + body,
    st.sampled_from([ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE, 24]),
    st.integers(0, 5),
    # Bodies: anything, or a handshake message of a ServerHello's type with a right length.
    st.one_of(st.binary(max_size=80),
              st.binary(max_size=120).map(lambda b: b"\x02" + len(b).to_bytes(3, "big") + b)),
    st.sampled_from([0, 0, 0, -1, 1, 300]),
)
_streams = st.one_of(st.binary(max_size=400), st.lists(_record, max_size=6).map(b"".join))


@settings(max_examples=300, deadline=None)
@given(client=_streams, server=_streams, start=st.integers(0, 8), end=st.sampled_from(["open", "fin", "rst"]))
def test_random_bytes_never_raise(client: bytes, server: bytes, start: int, end: str) -> None:
    parsed = parse_records(server, start)
    assert all(start <= r.start and r.start + 5 + r.length <= len(server) for r in parsed.records)
    server_hello(parsed.records)
    seen = handshake(connection(client, server, end=end), start, start)
    assert seen.outcome in ("established", "failed", "undecided")
    assert (seen.ts is None) == (seen.outcome == "undecided")
