"""One scenario SMTP session over aiosmtplib, recorded reply by reply.

Replies are data: whatever the server answers (or fails to answer) ends up as an ``Exchange`` and
nothing is raised for it. The client behaves like a plain MTA would: it stops a transaction the
server refused, always says QUIT while the connection is open, and stops at once on 421.

aiosmtplib's convenience methods (``ehlo()``, ``mail()``, ``rcpt()``, ``data()``) are not used:
they raise on codes they dislike, ``mail()``/``rcpt()`` may send an unrecorded EHLO of their own,
and ``data()`` hides the 354. Every command goes through ``SMTP.execute_command`` instead, which
returns any reply as an ``SMTPResponse`` and closes the connection on timeout, disconnect and 421.

ESMTP parameters (``SIZE=12000000``, ``SMTPUTF8``, ``NOTIFY=FAILURE``) go on MAIL and RCPT exactly as the
scenario wrote them, whatever the EHLO reply advertised: a server refusing one is an answer to record.
``SIZE=auto`` becomes the message's size. Command arguments are sent as UTF-8, so a non-ASCII address
(with ``SMTPUTF8``, or without it to see the refusal) reaches the server as written.

With ``starttls: true`` the client sends STARTTLS after EHLO (its reply recorded like any other), then
does the handshake itself, trusting only the run's CA and checking the role's host name, and records
how it ended as a ``TLS`` exchange without a code (TLS_ESTABLISHED / TLS_FAILED, then the details):
a certificate it does not trust is an outcome to judge, never an exception. aiosmtplib's ``starttls()``
is not used: it sends an unrecorded EHLO of its own and loses the 220 when the handshake fails.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from aiosmtplib import (
    SMTP,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from harness.errors import ScenarioError
from harness.scenario.model import SmtpSessionStep
from harness.smtp.message import data_payload, declared_size
from harness.smtp.transcript import TLS_ESTABLISHED, TLS_FAILED, Exchange, Transcript

__all__ = ["TlsTrust", "mail_parameters", "parse_enhanced", "reply_lines", "run_session"]

# RFC 3463: class "." subject "." detail, at the start of the reply text.
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?=\s|$)")
# aiosmtplib's own check (COMMAND_INJECTION_REGEX) raises ValueError on these mid-session; checking
# up front turns a bad scenario value into a located scenario error before anything is sent.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_CLOSING = 421
# ``SIZE=auto`` in a scenario's mail_options: the client fills in the size (keyword and value in any case).
_SIZE_AUTO = re.compile(r"(?i)SIZE=auto")


@dataclass(frozen=True)
class TlsTrust:
    """What the client's STARTTLS trusts: the run CA's certificate (PEM; None: nothing at all) and the
    host name the server's certificate must carry (the role's)."""

    ca_pem: bytes | None
    server_hostname: str

    def context(self) -> ssl.SSLContext:
        # Not create_default_context(): the host's own CA store has no business in a closed world.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_pem is not None:
            context.load_verify_locations(cadata=self.ca_pem.decode("ascii"))
        return context


def _handshake_failure(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        # OpenSSL's words: "certificate has expired", "Hostname mismatch, ...", "self-signed certificate".
        return f"{TLS_FAILED}: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"{TLS_FAILED}: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return f"{TLS_FAILED}: timed out after {_format_seconds(timeout_s)} s"
    return f"{TLS_FAILED}: {_describe_failure(exc, timeout_s)}"


class _SessionOver(Exception):
    """The connection is gone (or unusable); the reason is already recorded."""


def parse_enhanced(text: str) -> str | None:
    """The RFC 3463 enhanced status code the reply text starts with, if any."""
    match = _ENHANCED.match(text)
    return match.group(1) if match else None


def reply_lines(response: SMTPResponse) -> tuple[str, ...]:
    """The reply's lines as the server sent them, rebuilt from aiosmtplib's parsed response.

    aiosmtplib keeps no raw bytes: it joins each line's text (minus the 4-byte "250-" prefix,
    stripped of surrounding blanks) with "\\n". The rebuild is exact for well-formed replies; lost
    are trailing blanks, a code that differs between lines (RFC 5321 forbids it) and a bare
    "250" without a space, which comes back as "250".
    """
    texts = response.message.split("\n")
    last = len(texts) - 1
    lines: list[str] = []
    for i, text in enumerate(texts):
        sep = " " if i == last else "-"
        lines.append(f"{response.code}{sep}{text}" if text or sep == "-" else str(response.code))
    return tuple(lines)


def mail_parameters(options: tuple[str, ...], message_bytes: bytes) -> tuple[str, ...]:
    """The MAIL parameters as they go on the wire: ``SIZE=auto`` replaced by ``SIZE=<size>`` (RFC 1870:
    the message's octets, without dot-stuffing and the end-of-data indicator), the rest as written."""
    return tuple(f"SIZE={declared_size(message_bytes)}" if _SIZE_AUTO.fullmatch(option) else option
                 for option in options)


def _with_parameters(line: str, parameters: tuple[str, ...]) -> str:
    return " ".join((line, *parameters))


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g}"


def _describe_failure(exc: BaseException, timeout_s: float) -> str:
    """A short, stable text for a reply that never came."""
    if isinstance(exc, SMTPTimeoutError | TimeoutError):
        return f"timed out after {_format_seconds(timeout_s)} s"
    # aiosmtplib wraps the OSError it got; the cause says what actually happened.
    chain: list[BaseException] = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    for link in chain:
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, ConnectionResetError):
            return "connection reset by peer"
    for link in chain:
        if isinstance(link, SMTPServerDisconnected):
            return "connection closed by server"
    if isinstance(exc, SMTPConnectError):
        return f"connection failed: {exc}"
    if isinstance(exc, SMTPResponseException):
        return f"unreadable reply: {exc.message}"
    return f"connection lost: {exc}"


class _Session:
    def __init__(
        self,
        smtp: SMTP,
        step: SmtpSessionStep,
        transcript: Transcript,
        clock: Callable[[], float],
        trust: TlsTrust | None = None,
    ) -> None:
        self.smtp = smtp
        self.step = step
        self.transcript = transcript
        self.clock = clock
        self.trust = trust

    def record(self, command: str, sent: str | None, response: SMTPResponse) -> SMTPResponse:
        self.transcript.exchanges.append(
            Exchange(
                hop=self.transcript.hop,
                session=self.transcript.session,
                command=command,
                sent=sent,
                code=response.code,
                enhanced=parse_enhanced(response.message),
                text=response.message,
                lines=reply_lines(response),
                at_s=self.clock(),
                # The reply after the final dot is about the message sent: say which, as hops do.
                message_id=self.transcript.message_id if command == "END-OF-DATA" else None,
            )
        )
        return response

    def record_failure(self, command: str, sent: str | None, exc: BaseException) -> None:
        self.transcript.exchanges.append(
            Exchange(
                hop=self.transcript.hop,
                session=self.transcript.session,
                command=command,
                sent=sent,
                code=None,
                enhanced=None,
                text=_describe_failure(exc, self.step.timeout_s),
                at_s=self.clock(),
            )
        )

    def record_tls(self, text: str) -> None:
        self.transcript.exchanges.append(Exchange(hop=self.transcript.hop, session=self.transcript.session,
                                                  command="TLS", sent=None, code=None, enhanced=None, text=text,
                                                  at_s=self.clock()))

    async def start_tls(self) -> bool:
        """STARTTLS and the handshake; True when the session can go on over TLS. A refused STARTTLS
        leaves the connection in clear for QUIT; a failed handshake leaves nothing to talk over."""
        reply = await self.command("STARTTLS", "STARTTLS")
        if reply.code != 220:
            return False
        trust = self.trust or TlsTrust(None, self.smtp.hostname or "")
        protocol = self.smtp.protocol
        try:
            if protocol is None or protocol.transport is None:
                raise SMTPServerDisconnected("Server not connected")
            # As SMTPProtocol.start_tls after its 220: plaintext buffered past the 220 could only be an
            # injection (RFC 3207 4.2, CVE-2011-0411), so it is dropped.
            del protocol._buffer[:]
            transport = await asyncio.get_running_loop().start_tls(
                cast(asyncio.WriteTransport, protocol.transport), protocol, trust.context(), server_side=False,
                server_hostname=trust.server_hostname, ssl_handshake_timeout=self.step.timeout_s)
        except (ssl.SSLError, OSError, TimeoutError, SMTPServerDisconnected) as exc:
            self.record_tls(_handshake_failure(exc, self.step.timeout_s))
            self.smtp.close()
            raise _SessionOver from exc
        if transport is None:
            self.record_tls(f"{TLS_FAILED}: the connection closed during the handshake")
            self.smtp.close()
            raise _SessionOver
        protocol.transport = transport
        protocol._over_ssl = True
        self.smtp.transport = transport
        tls = transport.get_extra_info("ssl_object")
        version, cipher = (tls.version(), tls.cipher()[0]) if tls is not None and tls.cipher() else ("?", "?")
        self.record_tls(f"{TLS_ESTABLISHED}: {version} {cipher}, certificate verified for {trust.server_hostname}")
        return True

    async def command(self, command: str, line: str) -> SMTPResponse:
        """Send one command line and record its reply; raise _SessionOver when none can follow."""
        verb, _, arg = line.partition(" ")
        args = (verb.encode("ascii"), arg.encode("utf-8")) if arg else (verb.encode("ascii"),)
        try:
            response = await self.smtp.execute_command(*args, timeout=self.step.timeout_s)
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, ConnectionError) as exc:
            # A timeout or garbled reply leaves the stream out of step: nothing after it could be
            # paired with the right command, so the session ends here like a disconnect.
            self.record_failure(command, line, exc)
            self.smtp.close()
            raise _SessionOver from exc
        self.record(command, line, response)
        if response.code == _CLOSING:
            # aiosmtplib already closed the connection; RFC 5321 3.8: no QUIT after 421.
            raise _SessionOver
        return response

    async def end_of_data(self, message_bytes: bytes) -> SMTPResponse:
        """Send the message after the 354 and record the reply to the final dot.

        This mirrors ``SMTPProtocol.execute_data_command`` after its DATA/354 half: write the
        payload on the protocol and wait for one reply. The harness does its own dot-stuffing
        (``data_payload``) so the bytes on the wire are the ones it can show and test.
        """
        response = await self._written("END-OF-DATA", ".", data_payload(message_bytes))
        if response.code == _CLOSING:
            # Going around SMTP.execute_command also skips its close-on-421.
            self.smtp.close()
            raise _SessionOver
        return response

    async def transaction(self, message_bytes: bytes) -> None:
        step = self.step
        ehlo = await self.command("EHLO", f"EHLO {step.ehlo}")
        if ehlo.code // 100 == 5:
            # RFC 5321 4.1.4: a server that rejects EHLO may still speak plain SMTP.
            helo = await self.command("HELO", f"HELO {step.ehlo}")
            if helo.code // 100 != 2:
                return
        elif ehlo.code // 100 != 2:
            return
        if step.starttls:
            if not await self.start_tls():
                # A client that asked for TLS sends no mail in clear.
                return
            # RFC 3207 4.2: everything learnt before TLS is forgotten; EHLO again.
            again = await self.command("EHLO", f"EHLO {step.ehlo}")
            if again.code // 100 != 2:
                return

        mail_line = _with_parameters(f"MAIL FROM:<{step.mail_from}>",
                                     mail_parameters(step.mail_options, message_bytes))
        mail = await self.command("MAIL", mail_line)
        if mail.code // 100 != 2:
            # A refused MAIL (552 5.3.4 for an over-limit SIZE, 555 for an unknown parameter) ends the
            # transaction: no RCPT or DATA, QUIT follows.
            return

        accepted = 0
        for rcpt in step.rcpt_to:
            reply = await self.command("RCPT", _with_parameters(f"RCPT TO:<{rcpt}>", step.rcpt_options))
            if reply.code // 100 == 2:
                accepted += 1
        if not accepted:
            return

        data = await self.command("DATA", "DATA")
        if data.code != 354:
            return
        await self.end_of_data(message_bytes)

    async def quit(self) -> None:
        """QUIT, then the client's half of the connection closed at once (a TCP half-close; not possible
        over TLS), then the reply. Nothing follows QUIT, and saying so lets a server that waits for the
        client's close before it flushes its reply answer at once: Exim holds its 221 until then, 200 ms
        on every session otherwise. Not ``execute_command``: after QUIT it turns a connection lost without
        a reply (a reset) into a "221" of its own making, a reply that was never on the wire."""
        if self.smtp.is_connected:
            await self._written("QUIT", "QUIT", b"QUIT\r\n", last=True)

    async def _written(self, command: str, sent: str, data: bytes, *, last: bool = False) -> SMTPResponse:
        """Write ``data`` on the protocol and record the one reply to it, around ``execute_command``
        (which would add to it); ``last``: then close the client's side (a TCP half-close, where the
        transport can). Raise _SessionOver when no reply came."""
        protocol = self.smtp.protocol
        try:
            if protocol is None or self.smtp.transport is None:
                raise SMTPServerDisconnected("Server not connected")
            protocol.write(data)
            transport = cast(asyncio.WriteTransport, self.smtp.transport)
            if last and transport.can_write_eof():
                transport.write_eof()
            response = await protocol.read_response(timeout=self.step.timeout_s)
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, ConnectionError) as exc:
            self.record_failure(command, sent, exc)
            self.smtp.close()
            raise _SessionOver from exc
        return self.record(command, sent, response)


def _check_step(step: SmtpSessionStep) -> None:
    values = {"ehlo": step.ehlo, "mail_from": step.mail_from}
    values.update({f"rcpt_to[{i}]": r for i, r in enumerate(step.rcpt_to)})
    for key, value in values.items():
        if _CONTROL.search(value):
            raise ScenarioError(step.mark.file, step.mark.line, step.mark.col,
                                f"{key} contains a control character: {value!r}")
    options = {f"mail_options[{i}]": o for i, o in enumerate(step.mail_options)}
    options.update({f"rcpt_options[{i}]": o for i, o in enumerate(step.rcpt_options)})
    for key, value in options.items():
        # Each one is a single parameter: a blank would put two spaces (or a trailing one) on the line.
        if _CONTROL.search(value) or not value.strip() or value != value.strip():
            raise ScenarioError(step.mark.file, step.mark.line, step.mark.col,
                                f"{key} must be one ESMTP parameter such as SIZE=1000 or NOTIFY=FAILURE: "
                                f"{value!r}")
    if not step.ehlo.strip() or any(c.isspace() for c in step.ehlo):
        raise ScenarioError(step.mark.file, step.mark.line, step.mark.col,
                            f"ehlo must be one non-empty word: {step.ehlo!r}")
    if not step.ehlo.isascii():
        raise ScenarioError(step.mark.file, step.mark.line, step.mark.col,
                            f"ehlo must be ASCII: {step.ehlo!r}")


async def run_session(
    address: str,
    port: int,
    step: SmtpSessionStep,
    *,
    hop: str,
    session: int,
    clock: Callable[[], float],
    message_bytes: bytes,
    message_id: str,
    trust: TlsTrust | None = None,
) -> Transcript:
    """Run ``step`` against ``address:port`` and return every exchange.

    ``clock`` gives seconds since the scenario started; ``Exchange.at_s`` is taken when the reply
    (or the failure) arrived. Each wait (connect, greeting, every reply) is bounded by
    ``step.timeout_s``. Stages never reached simply have no exchange. ``trust`` is what a ``starttls``
    step trusts (None: no CA at all, every certificate fails). Raises only ScenarioError,
    for step values that cannot be put on a command line, before connecting.
    """
    _check_step(step)
    transcript = Transcript(hop=hop, session=session, message_id=message_id, message_bytes=message_bytes)
    smtp = SMTP(
        hostname=address,
        port=port,
        local_hostname=step.ehlo,
        timeout=step.timeout_s,
        # start_tls=None (the default) would STARTTLS on its own whenever offered.
        use_tls=False,
        start_tls=False,
    )
    run = _Session(smtp, step, transcript, clock, trust)
    try:
        try:
            greeting = await smtp.connect()
        except SMTPConnectResponseError as exc:
            # Must precede SMTPConnectError (its base): this one carries the server's reply. The
            # server closes after a non-220 greeting and aiosmtplib has closed its side already.
            run.record("CONNECT", None, SMTPResponse(exc.code, exc.message))
            return transcript
        except (SMTPTimeoutError, SMTPConnectError, SMTPServerDisconnected, SMTPResponseException) as exc:
            # SMTPResponseException here is a greeting aiosmtplib could not parse.
            run.record_failure("CONNECT", None, exc)
            return transcript
        run.record("CONNECT", None, greeting)

        try:
            await run.transaction(message_bytes)
            await run.quit()
        except _SessionOver:
            pass
    finally:
        # Also on cancellation: never leave the socket to the garbage collector.
        smtp.close()
    return transcript
