"""run_session against in-process servers: aiosmtpd for real protocol handling, tiny scripted asyncio
servers for the misbehaving ones. No Docker."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from harness.errors import ScenarioError
from harness.scenario.model import Mark, Message, SmtpSessionStep
from harness.smtp.client import mail_parameters, parse_enhanced, run_session
from harness.smtp.message import data_payload, render_message
from harness.smtp.transcript import Transcript

HOST = "127.0.0.1"
GOOD = "bob@example.test"
BAD = "nobody@nullmx.test"
BODY = "first line\n.starts with a dot\n.\n..two dots\nlast line\n"


def _step(rcpt_to: tuple[str, ...] = (GOOD,), timeout_s: float = 2.0, *, mail_from: str = "alice@sender.test",
          mail_options: tuple[str, ...] = (), rcpt_options: tuple[str, ...] = ()) -> SmtpSessionStep:
    return SmtpSessionStep(
        host="client",
        ehlo="client.test",
        mail_from=mail_from,
        rcpt_to=rcpt_to,
        message=Message(headers=(("Subject", "unit test"),), body=BODY),
        expect={},
        expect_rcpt={},
        mark=Mark("scenario.yaml", 3, 5),
        timeout_s=timeout_s,
        mail_options=mail_options,
        rcpt_options=rcpt_options,
    )


async def _session(port: int, step: SmtpSessionStep) -> Transcript:
    data, message_id = render_message(step.message, mail_from=step.mail_from, rcpt_to=step.rcpt_to,
                                      domain="sender.test")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    return await run_session(HOST, port, step, hop="client->mx", session=1, clock=lambda: loop.time() - t0,
                             message_bytes=data, message_id=message_id)


def _run(port: int, step: SmtpSessionStep) -> Transcript:
    return asyncio.run(_session(port, step))


def _shape(t: Transcript) -> list[tuple[str, int | None, str | None]]:
    return [(e.command, e.code, e.enhanced) for e in t.exchanges]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# --- aiosmtpd-backed servers ---------------------------------------------------------------------


class Handler:
    """Accepts everything unless told otherwise; keeps what DATA delivered."""

    def __init__(self, reject_mail: str | None = None, reject_rcpt: dict[str, str] | None = None) -> None:
        self.reject_mail = reject_mail
        self.reject_rcpt = reject_rcpt or {}
        self.received: list[Envelope] = []

    async def handle_MAIL(self, server: SMTPServer, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.reject_mail:
            return self.reject_mail
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTPServer, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.reject_rcpt:
            return self.reject_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 2.0.0 Ok: queued as 4Vx1"


class RecordingServer(SMTPServer):
    """aiosmtpd's own protocol handling, keeping each MAIL and RCPT line as the server read it (the
    argument is the received bytes, decoded as UTF-8 with surrogateescape, blanks around it stripped)."""

    lines: list[bytes]

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.lines.append(b"MAIL " + (arg or "").encode("utf-8", "surrogateescape"))
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.lines.append(b"RCPT " + (arg or "").encode("utf-8", "surrogateescape"))
        await super().smtp_RCPT(arg)


class RecordingController(Controller):
    def __init__(self, handler: Handler, lines: list[bytes], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.lines = lines

    def factory(self) -> SMTPServer:
        server = RecordingServer(self.handler, **self.SMTP_kwargs)
        server.lines = self.lines
        return server


@contextmanager
def aiosmtpd_server(handler: Handler, lines: list[bytes] | None = None, **smtp_kwargs: Any) -> Iterator[int]:
    """aiosmtpd on a free port; ``lines`` (when given) collects the MAIL and RCPT lines it read;
    ``smtp_kwargs`` go to aiosmtpd's SMTP (data_size_limit, enable_SMTPUTF8)."""
    port = _free_port()
    kwargs: dict[str, Any] = {"hostname": HOST, "port": port, "server_hostname": "mx.example.test", **smtp_kwargs}
    controller = (Controller(handler, **kwargs) if lines is None
                  else RecordingController(handler, lines, **kwargs))
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


# --- scripted servers --------------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _run_scripted(script: Script, step: SmtpSessionStep) -> Transcript:
    """Serve ``script`` on a free port in the client's own loop, then run the session against it."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    async def main() -> Transcript:
        server = await asyncio.start_server(serve, HOST, 0)
        async with server:
            return await _session(server.sockets[0].getsockname()[1], step)

    return asyncio.run(main())


def _replies(greeting: bytes, replies: dict[str, bytes | None], received: list[bytes] | None = None) -> Script:
    """A server answering each verb from ``replies``; None closes the connection instead of replying,
    a verb not listed gets no reply at all (the client times out). ``received`` collects every command
    line as read, CRLF included."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        while line := await reader.readline():
            if received is not None:
                received.append(line)
            verb = line.split(b" ", 1)[0].strip().decode().upper()
            if verb not in replies:
                await reader.read()  # say nothing until the client gives up and closes
                return
            reply = replies[verb]
            if reply is None:
                return
            writer.write(reply)
            await writer.drain()
            if verb == "DATA" and reply.startswith(b"354"):
                while (await reader.readline()) != b".\r\n":
                    pass
                writer.write(replies.get(".") or b"250 2.0.0 queued\r\n")
                await writer.drain()
            if reply.startswith(b"421") or verb == "QUIT":
                return

    return script


EHLO_OK = b"250-mx.example.test\r\n250 8BITMIME\r\n"


# --- tests -------------------------------------------------------------------------------------


def test_accept_all_records_every_exchange_and_body_round_trips() -> None:
    handler = Handler()
    with aiosmtpd_server(handler) as port:
        step = _step()
        t = _run(port, step)

    assert _shape(t) == [
        ("CONNECT", 220, None),
        ("EHLO", 250, None),
        ("MAIL", 250, "2.1.0"),
        ("RCPT", 250, "2.1.5"),
        ("DATA", 354, None),
        ("END-OF-DATA", 250, "2.0.0"),
        ("QUIT", 221, None),
    ]
    assert [e.sent for e in t.exchanges] == [
        None, "EHLO client.test", "MAIL FROM:<alice@sender.test>", f"RCPT TO:<{GOOD}>", "DATA", ".", "QUIT",
    ]
    assert t.first("END-OF-DATA") is not None
    assert t.exchanges[5].text == "2.0.0 Ok: queued as 4Vx1"
    assert t.exchanges[5].lines == ("250 2.0.0 Ok: queued as 4Vx1",)
    assert t.exchanges[4].text.startswith("End data with")
    assert all(e.hop == "client->mx" and e.session == 1 for e in t.exchanges)
    times = [e.at_s for e in t.exchanges]
    assert times == sorted(times) and times[0] >= 0

    # aiosmtpd undoes the dot-stuffing: what it stored is exactly what we meant to send.
    assert t.message_bytes is not None and t.message_id is not None
    assert b"\r\n.starts with a dot\r\n.\r\n..two dots\r\n" in t.message_bytes
    [envelope] = handler.received
    assert envelope.original_content == t.message_bytes
    assert envelope.rcpt_tos == [GOOD]
    assert t.message_id.encode() in envelope.original_content


def test_multiline_ehlo_reply_lines_are_recorded() -> None:
    with aiosmtpd_server(Handler()) as port:
        t = _run(port, _step())
    ehlo = t.exchanges[1]
    assert ehlo.lines[0] == "250-mx.example.test"
    assert "250-8BITMIME" in ehlo.lines
    assert ehlo.lines[-1] == "250 HELP"
    assert all(line.startswith("250-") for line in ehlo.lines[:-1])
    assert ehlo.text == "\n".join(line[4:] for line in ehlo.lines)
    assert t.exchanges[0].lines[0].startswith("220 mx.example.test")


def test_one_recipient_rejected_still_sends_data() -> None:
    handler = Handler(reject_rcpt={BAD: "556 5.1.10 Recipient address has null MX"})
    with aiosmtpd_server(handler) as port:
        t = _run(port, _step(rcpt_to=(BAD, GOOD)))
    assert _shape(t) == [
        ("CONNECT", 220, None),
        ("EHLO", 250, None),
        ("MAIL", 250, "2.1.0"),
        ("RCPT", 556, "5.1.10"),
        ("RCPT", 250, "2.1.5"),
        ("DATA", 354, None),
        ("END-OF-DATA", 250, "2.0.0"),
        ("QUIT", 221, None),
    ]
    rcpts = t.all("RCPT")
    assert [r.sent for r in rcpts] == [f"RCPT TO:<{BAD}>", f"RCPT TO:<{GOOD}>"]
    assert rcpts[0].text == "5.1.10 Recipient address has null MX"
    assert rcpts[0].reply_str() == "556 5.1.10 Recipient address has null MX"
    assert [e.rcpt_tos for e in handler.received] == [[GOOD]]


def test_all_recipients_rejected_skips_data() -> None:
    handler = Handler(reject_rcpt={BAD: "550 5.1.1 no such user", GOOD: "450 4.2.0 try later"})
    with aiosmtpd_server(handler) as port:
        t = _run(port, _step(rcpt_to=(BAD, GOOD)))
    assert [c for c, _, _ in _shape(t)] == ["CONNECT", "EHLO", "MAIL", "RCPT", "RCPT", "QUIT"]
    assert [(r.code, r.enhanced) for r in t.all("RCPT")] == [(550, "5.1.1"), (450, "4.2.0")]
    assert handler.received == []


def test_mail_rejected_skips_rcpt_and_data() -> None:
    with aiosmtpd_server(Handler(reject_mail="550 5.7.1 sender blocked")) as port:
        t = _run(port, _step())
    assert _shape(t) == [
        ("CONNECT", 220, None),
        ("EHLO", 250, None),
        ("MAIL", 550, "5.7.1"),
        ("QUIT", 221, None),
    ]
    assert t.exchanges[2].text == "5.7.1 sender blocked"


def test_greeting_521_ends_the_session() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"521 5.3.2 no mail here\r\n")
        await writer.drain()

    t = _run_scripted(script, _step())
    assert _shape(t) == [("CONNECT", 521, "5.3.2")]
    connect = t.exchanges[0]
    assert connect.sent is None
    assert connect.text == "5.3.2 no mail here"
    assert connect.lines == ("521 5.3.2 no mail here",)


def test_connection_refused() -> None:
    t = _run(_free_port(), _step())
    assert _shape(t) == [("CONNECT", None, None)]
    assert t.exchanges[0].text == "connection refused"
    assert t.exchanges[0].lines == ()


async def _close_right_after_ehlo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 mx ESMTP\r\n")
    await reader.readline()
    writer.write(EHLO_OK)
    await writer.drain()


@pytest.mark.parametrize("script", [
    _close_right_after_ehlo,  # the close may reach the client before or after it sends MAIL
    _replies(b"220 mx ESMTP\r\n", {"EHLO": EHLO_OK, "MAIL": None}),  # reads MAIL, then closes
], ids=["before-mail", "on-mail"])
def test_server_closing_after_ehlo(script: Script) -> None:
    t = _run_scripted(script, _step())
    assert _shape(t) == [("CONNECT", 220, None), ("EHLO", 250, None), ("MAIL", None, None)]
    assert t.exchanges[1].lines == ("250-mx.example.test", "250 8BITMIME")
    assert t.exchanges[2].text == "connection closed by server"
    assert t.exchanges[2].sent == "MAIL FROM:<alice@sender.test>"


def test_421_stops_without_quit() -> None:
    script = _replies(b"220 mx ESMTP\r\n", {"EHLO": EHLO_OK, "MAIL": b"421 4.3.2 shutting down\r\n"})
    t = _run_scripted(script, _step())
    assert _shape(t) == [("CONNECT", 220, None), ("EHLO", 250, None), ("MAIL", 421, "4.3.2")]


def test_silent_server_times_out() -> None:
    t = _run_scripted(_replies(b"220 mx ESMTP\r\n", {}), _step(timeout_s=0.2))
    assert _shape(t) == [("CONNECT", 220, None), ("EHLO", None, None)]
    assert t.exchanges[1].text == "timed out after 0.2 s"


def test_ehlo_rejected_falls_back_to_helo() -> None:
    script = _replies(b"220 mx SMTP\r\n", {
        "EHLO": b"502 5.5.1 command not implemented\r\n",
        "HELO": b"250 mx\r\n",
        "MAIL": b"250 ok\r\n",
        "RCPT": b"250 ok\r\n",
        "DATA": b"354 go ahead\r\n",
        "QUIT": b"221 bye\r\n",
    })
    t = _run_scripted(script, _step())
    assert [(c, code) for c, code, _ in _shape(t)] == [
        ("CONNECT", 220), ("EHLO", 502), ("HELO", 250), ("MAIL", 250), ("RCPT", 250),
        ("DATA", 354), ("END-OF-DATA", 250), ("QUIT", 221),
    ]
    assert t.first("HELO") is not None and t.exchanges[2].sent == "HELO client.test"


def test_data_refused_goes_to_quit() -> None:
    script = _replies(b"220 mx ESMTP\r\n", {
        "EHLO": EHLO_OK,
        "MAIL": b"250 ok\r\n",
        "RCPT": b"250 ok\r\n",
        "DATA": b"554 5.6.0 no data for you\r\n",
        "QUIT": b"221 bye\r\n",
    })
    t = _run_scripted(script, _step())
    assert [c for c, _, _ in _shape(t)] == ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert t.first("DATA") is not None and t.exchanges[4].enhanced == "5.6.0"


def _until_quit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
    """Greets and accepts a transaction, then reads QUIT; what follows is each test's."""

    async def run() -> None:
        writer.write(b"220 mx ESMTP\r\n")
        for reply in (EHLO_OK, b"250 ok\r\n", b"250 ok\r\n", b"354 go on\r\n"):
            await reader.readline()
            writer.write(reply)
        while (await reader.readline()) != b".\r\n":
            pass
        writer.write(b"250 2.0.0 queued\r\n")
        assert await reader.readline() == b"QUIT\r\n"

    return run()


def test_quit_closes_the_clients_side_so_a_server_holding_its_221_until_then_answers() -> None:
    # As Exim does: its 221 waits for the client's close (200 ms, then the kernel sends it anyway). This
    # server never sends it unless the client closes its side: without the half-close the QUIT times out.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _until_quit(reader, writer)
        assert await reader.read() == b""  # the client's FIN, nothing after QUIT
        writer.write(b"221 2.0.0 bye\r\n")
        await writer.drain()

    t = _run_scripted(script, _step(timeout_s=1.0))
    assert _shape(t)[-2:] == [("END-OF-DATA", 250, "2.0.0"), ("QUIT", 221, "2.0.0")]


def test_a_reset_instead_of_a_reply_to_quit_is_recorded_as_such_not_as_221() -> None:
    # aiosmtplib's execute_command answers a connection lost after QUIT with a "221" of its own.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _until_quit(reader, writer)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST

    t = _run_scripted(script, _step())
    assert _shape(t)[-1] == ("QUIT", None, None)
    assert t.exchanges[-1].text == "connection reset by peer"


def test_unparseable_greeting_is_a_failed_connect() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello there\r\n")
        await writer.drain()
        await reader.read()

    t = _run_scripted(script, _step())
    assert _shape(t) == [("CONNECT", None, None)]
    assert t.exchanges[0].text.startswith("unreadable reply:")


def test_control_characters_are_a_scenario_error_before_connecting() -> None:
    with pytest.raises(ScenarioError, match=r"scenario.yaml:3:5: rcpt_to\[0\] contains a control"):
        _run(_free_port(), _step(rcpt_to=("a@b.test>\r\nDATA",)))


# --- ESMTP parameters on MAIL and RCPT --------------------------------------------------------


def _message_size(step: SmtpSessionStep) -> int:
    """The rendered message's length; the same for every rendering (fixed-width Date and Message-ID)."""
    data, _ = render_message(step.message, mail_from=step.mail_from, rcpt_to=step.rcpt_to, domain="sender.test")
    return len(data)


def test_mail_parameters_replace_size_auto_only() -> None:
    assert mail_parameters(("size=AUTO", "SMTPUTF8", "SIZE=autox", "SIZE=10"), b"12345\r\n") == (
        "SIZE=7", "SMTPUTF8", "SIZE=autox", "SIZE=10")
    assert mail_parameters((), b"x") == ()


def test_mail_parameters_reach_aiosmtpd_as_written_with_size_auto_filled_in() -> None:
    handler = Handler()
    lines: list[bytes] = []
    step = _step(rcpt_to=(GOOD, "carol@example.test"), mail_options=("SIZE=auto", "BODY=8BITMIME", "SMTPUTF8"))
    with aiosmtpd_server(handler, lines) as port:
        t = _run(port, step)

    assert [c for c, _, _ in _shape(t)] == ["CONNECT", "EHLO", "MAIL", "RCPT", "RCPT", "DATA", "END-OF-DATA", "QUIT"]
    assert t.message_bytes is not None
    size = len(t.message_bytes)
    mail_line = f"MAIL FROM:<alice@sender.test> SIZE={size} BODY=8BITMIME SMTPUTF8"
    assert t.exchanges[2].sent == mail_line
    assert [r.sent for r in t.all("RCPT")] == [f"RCPT TO:<{GOOD}>", "RCPT TO:<carol@example.test>"]
    assert lines == [mail_line.encode(), f"RCPT TO:<{GOOD}>".encode(), b"RCPT TO:<carol@example.test>"]

    [envelope] = handler.received
    assert envelope.mail_options == [f"SIZE={size}", "BODY=8BITMIME", "SMTPUTF8"]
    # RFC 1870: SIZE counts the message as handed over, which is what the server stored; the DATA
    # payload adds the dots of dot-stuffing (BODY has three lines starting with one) and ".\r\n".
    assert envelope.original_content is not None and len(envelope.original_content) == size
    assert len(data_payload(t.message_bytes)) == size + 3 + len(b".\r\n")


@pytest.mark.parametrize(("slack", "mail_code"), [(0, 250), (-1, 552)], ids=["at-limit", "one-over"])
def test_size_auto_is_exact_against_aiosmtpd_size_limit(slack: int, mail_code: int) -> None:
    step = _step(mail_options=("SIZE=auto",))
    size = _message_size(step)
    with aiosmtpd_server(Handler(), data_size_limit=size + slack) as port:
        t = _run(port, step)
    assert t.exchanges[2].sent == f"MAIL FROM:<alice@sender.test> SIZE={size}"
    assert t.exchanges[2].code == mail_code
    if mail_code == 552:
        assert t.exchanges[2].text == "Error: message size exceeds fixed maximum message size"
        assert [c for c, _, _ in _shape(t)] == ["CONNECT", "EHLO", "MAIL", "QUIT"]


def test_size_refused_at_mail_is_recorded_and_ends_the_transaction() -> None:
    lines: list[bytes] = []
    handler = Handler(reject_mail="552 5.3.4 Message size exceeds fixed limit")
    with aiosmtpd_server(handler, lines) as port:
        t = _run(port, _step(mail_options=("SIZE=12000000",), rcpt_options=("NOTIFY=FAILURE",)))
    assert _shape(t) == [
        ("CONNECT", 220, None),
        ("EHLO", 250, None),
        ("MAIL", 552, "5.3.4"),
        ("QUIT", 221, None),
    ]
    mail = t.exchanges[2]
    assert mail.sent == "MAIL FROM:<alice@sender.test> SIZE=12000000"
    assert mail.reply_str() == "552 5.3.4 Message size exceeds fixed limit"
    assert lines == [b"MAIL FROM:<alice@sender.test> SIZE=12000000"]  # no RCPT, no DATA
    assert handler.received == []


def test_unadvertised_parameters_are_sent_and_the_refusal_recorded() -> None:
    # aiosmtpd offers no DSN: it refuses RET and ENVID, and the client sends them anyway.
    lines: list[bytes] = []
    with aiosmtpd_server(Handler(), lines) as port:
        t = _run(port, _step(mail_options=("RET=HDRS", "ENVID=x")))
    assert "DSN" not in t.exchanges[1].text
    assert [(c, code) for c, code, _ in _shape(t)] == [("CONNECT", 220), ("EHLO", 250), ("MAIL", 555), ("QUIT", 221)]
    assert t.exchanges[2].text == "MAIL FROM parameters not recognized or not implemented"
    assert lines == [b"MAIL FROM:<alice@sender.test> RET=HDRS ENVID=x"]


def test_dsn_parameters_exact_bytes_on_the_wire() -> None:
    received: list[bytes] = []
    script = _replies(b"220 mx ESMTP\r\n", {
        "EHLO": b"250-mx.example.test\r\n250 DSN\r\n",
        "MAIL": b"250 2.1.0 Ok\r\n",
        "RCPT": b"250 2.1.5 Ok\r\n",
        "DATA": b"354 go ahead\r\n",
        "QUIT": b"221 2.0.0 Bye\r\n",
    }, received)
    step = _step(rcpt_to=(GOOD, "carol@example.test"), mail_options=("RET=HDRS", "ENVID=x"),
                 rcpt_options=("NOTIFY=FAILURE",))
    t = _run_scripted(script, step)
    assert [c for c, _, _ in _shape(t)] == ["CONNECT", "EHLO", "MAIL", "RCPT", "RCPT", "DATA", "END-OF-DATA", "QUIT"]
    commands = [line for line in received if line.split(b" ")[0].rstrip(b"\r\n") in {b"MAIL", b"RCPT", b"DATA"}]
    assert commands == [
        b"MAIL FROM:<alice@sender.test> RET=HDRS ENVID=x\r\n",
        b"RCPT TO:<bob@example.test> NOTIFY=FAILURE\r\n",
        b"RCPT TO:<carol@example.test> NOTIFY=FAILURE\r\n",
        b"DATA\r\n",
    ]
    assert [e.sent for e in t.exchanges[2:5]] == [line.decode().removesuffix("\r\n") for line in commands[:3]]


def test_non_ascii_addresses_go_as_utf8_with_smtputf8() -> None:
    handler = Handler()
    lines: list[bytes] = []
    sender, rcpt = "jörg@sender.test", "zoë@example.test"
    with aiosmtpd_server(handler, lines, enable_SMTPUTF8=True) as port:
        t = _run(port, _step(rcpt_to=(rcpt,), mail_from=sender, mail_options=("SMTPUTF8",)))
    assert "250-SMTPUTF8" in t.exchanges[1].lines
    assert [(c, code) for c, code, _ in _shape(t)][2:] == [("MAIL", 250), ("RCPT", 250), ("DATA", 354),
                                                         ("END-OF-DATA", 250), ("QUIT", 221)]
    assert lines == ["MAIL FROM:<jörg@sender.test> SMTPUTF8".encode(), "RCPT TO:<zoë@example.test>".encode()]
    assert lines[0] == b"MAIL FROM:<j\xc3\xb6rg@sender.test> SMTPUTF8"
    assert t.exchanges[2].sent == "MAIL FROM:<jörg@sender.test> SMTPUTF8"
    [envelope] = handler.received
    assert (envelope.mail_from, envelope.rcpt_tos, envelope.smtp_utf8) == (sender, [rcpt], True)


def test_non_ascii_address_without_smtputf8_is_sent_and_the_refusal_recorded() -> None:
    # A server in strict ASCII mode: the scenario may be testing exactly this refusal.
    with aiosmtpd_server(Handler(), enable_SMTPUTF8=False) as port:
        t = _run(port, _step(mail_from="jörg@sender.test"))
    mail = t.exchanges[2]
    assert (mail.command, mail.sent, mail.code) == ("MAIL", "MAIL FROM:<jörg@sender.test>", 500)
    assert mail.text == "Error: strict ASCII mode"


@pytest.mark.parametrize(("options", "key"), [
    ({"mail_options": ("SIZE=1\r\nRSET",)}, r"mail_options\[0\]"),
    ({"mail_options": ("SMTPUTF8", "")}, r"mail_options\[1\]"),
    ({"rcpt_options": (" NOTIFY=FAILURE",)}, r"rcpt_options\[0\]"),
])
def test_bad_parameters_are_a_scenario_error_before_connecting(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ScenarioError, match=rf"scenario.yaml:3:5: {key} must be one ESMTP parameter"):
        _run(_free_port(), _step(**options))


@pytest.mark.parametrize(("text", "expected"), [
    ("5.1.10 Recipient address has null MX", "5.1.10"),
    ("2.0.0 Ok", "2.0.0"),
    ("4.7.1", "4.7.1"),
    ("OK", None),
    ("5.1.1000 too long", None),
    ("3.0.0 not a class", None),
    ("5.1.1x", None),
    ("", None),
])
def test_parse_enhanced(text: str, expected: Any) -> None:
    assert parse_enhanced(text) == expected
