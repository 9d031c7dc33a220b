"""run_session against in-process servers: aiosmtpd for real protocol handling, tiny scripted asyncio
servers for the misbehaving ones. No Docker."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from harness.errors import ScenarioError
from harness.scenario.model import Mark, Message, SmtpSessionStep
from harness.smtp.client import parse_enhanced, run_session
from harness.smtp.message import render_message
from harness.smtp.transcript import Transcript

HOST = "127.0.0.1"
GOOD = "bob@example.test"
BAD = "nobody@nullmx.test"
BODY = "first line\n.starts with a dot\n.\n..two dots\nlast line\n"


def _step(rcpt_to: tuple[str, ...] = (GOOD,), timeout_s: float = 2.0) -> SmtpSessionStep:
    return SmtpSessionStep(
        host="client",
        ehlo="client.test",
        mail_from="alice@sender.test",
        rcpt_to=rcpt_to,
        message=Message(headers=(("Subject", "unit test"),), body=BODY),
        expect={},
        expect_rcpt={},
        mark=Mark("scenario.yaml", 3, 5),
        timeout_s=timeout_s,
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


@contextmanager
def aiosmtpd_server(handler: Handler) -> Iterator[int]:
    port = _free_port()
    controller = Controller(handler, hostname=HOST, port=port, server_hostname="mx.example.test")
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


def _replies(greeting: bytes, replies: dict[str, bytes | None]) -> Script:
    """A server answering each verb from ``replies``; None closes the connection instead of replying,
    a verb not listed gets no reply at all (the client times out)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        while line := await reader.readline():
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
