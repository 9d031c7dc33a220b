"""Turning a scenario's message into the bytes a session sends. Pure: no I/O."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

from harness.scenario import model

CRLF = b"\r\n"
# The end-of-data indicator is CRLF "." CRLF; the first CRLF may be the one ending the last line.
END_OF_DATA = b".\r\n"

_LINE_ENDINGS = re.compile(r"\r\n|\r|\n")
# Any line start counts, also after a bare LF: several MTAs treat a bare LF as a line end, and a
# stray "\n." must not end the transaction early there.
_LINE_START_DOT = re.compile(rb"(?m)^\.")


def _crlf(text: str) -> str:
    return _LINE_ENDINGS.sub("\r\n", text)


def render_message(
    message: model.Message,
    *,
    mail_from: str,
    rcpt_to: Sequence[str],
    domain: str,
    now: datetime | None = None,
) -> tuple[bytes, str]:
    """The RFC 5322 message (CRLF line endings, ending in CRLF) and its Message-ID.

    The scenario's headers come first, in their order and spelled as written; ``From``, ``To``, ``Date``
    and ``Message-ID`` are appended when absent (compared case-insensitively). Appending rather than
    prepending keeps trace fields a scenario supplies (``Received``, ``Return-Path``) on top, where
    RFC 5322 3.6.7 puts them. Values are sent as UTF-8 without RFC 2047 encoding: the scenario says
    exactly what goes on the wire. ``now`` pins the Date header for tests.
    """
    headers: list[tuple[str, str]] = list(message.headers)
    present = {name.strip().lower() for name, _ in headers}

    message_id: str | None = None
    for name, value in headers:
        if name.strip().lower() == "message-id":
            message_id = value.strip()
            break

    if "from" not in present:
        # A null reverse-path still needs an author: RFC 5322 makes From mandatory, and MTAs
        # write bounces as MAILER-DAEMON too.
        headers.append(("From", mail_from or f"MAILER-DAEMON@{domain}"))
    if "to" not in present:
        headers.append(("To", ", ".join(rcpt_to) if rcpt_to else "undisclosed-recipients:;"))
    if "date" not in present:
        headers.append(("Date", format_datetime(now or datetime.now(UTC))))
    if message_id is None:
        message_id = f"<{uuid.uuid4()}@{domain}>"
        headers.append(("Message-ID", message_id))

    head = "".join(f"{name}: {_crlf(value)}\r\n" for name, value in headers)
    body = _crlf(message.body)
    if body and not body.endswith("\r\n"):
        body += "\r\n"
    return (head + "\r\n" + body).encode("utf-8"), message_id


def declared_size(data: bytes) -> int:
    """The message size for ``SIZE=`` (RFC 1870 section 3): its octets with their CRLFs, as handed to the
    transaction, not counting the dots added by dot-stuffing or the end-of-data indicator. For a
    message that does not end in CRLF, the CRLF ``data_payload`` adds belongs to the indicator."""
    return len(data)


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2: double the "." at the start of every line so no line reads as end-of-data."""
    return _LINE_START_DOT.sub(b"..", data)


def data_payload(data: bytes) -> bytes:
    """What follows the 354: the dot-stuffed message and the end-of-data indicator."""
    stuffed = dot_stuff(data)
    if stuffed and not stuffed.endswith(CRLF):
        stuffed += CRLF
    return stuffed + END_OF_DATA
