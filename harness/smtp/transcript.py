"""Replies as data: what was sent and what came back, for one SMTP session on one hop."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Commands as they appear in results; DATA is the 354 intermediate reply, END-OF-DATA the reply after the dot.
COMMANDS = ("CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-DATA", "RSET", "NOOP", "QUIT",
            "STARTTLS", "AUTH")


# How a capture decoder words a reply that may still come (harness.observe.smtpstream).
PENDING_TEXT = "no reply yet"
# The start of a client's TLS exchange's text: how its handshake after STARTTLS ended (harness.smtp.client).
TLS_ESTABLISHED = "TLS established"
TLS_FAILED = "TLS handshake failed"


def tls_outcome(text: str) -> str:
    """``established`` or ``failed``, from the text of a client's TLS exchange."""
    return "established" if text.startswith(TLS_ESTABLISHED) else "failed"


_TLS_VERSION = re.compile(r"\bTLSv1(?:\.\d)?\b")


def tls_version(text: str) -> str | None:
    """The protocol version ("TLSv1.3") a TLS exchange's text names, if any."""
    found = _TLS_VERSION.search(text)
    return found.group(0) if found else None


def outcome_word(exchange: Exchange) -> str:
    """The reply code as text, or for an exchange without one what happened instead: a TLS handshake
    established or failed (the client's), TLS started (a capture sees no further), else closed."""
    if exchange.code is not None:
        return str(exchange.code)
    if exchange.command == "TLS":
        return tls_outcome(exchange.text) if exchange.text.startswith((TLS_ESTABLISHED, TLS_FAILED)) else "started"
    return "closed"


@dataclass(frozen=True)
class Exchange:
    """One command (or the connection itself) and the reply it got.

    ``code`` is None when no reply came: the peer closed, reset or timed out; ``text`` then says which.
    """

    hop: str
    session: int
    command: str
    sent: str | None
    code: int | None
    enhanced: str | None
    text: str
    lines: tuple[str, ...] = ()
    at_s: float = 0.0  # seconds since the scenario started
    # On END-OF-DATA (and BDAT ... LAST): the Message-ID header of the content that reply is about, as
    # it crossed the wire. What ties a hop's transaction to the scenario's own message.
    message_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "hop": self.hop,
            "session": self.session,
            "command": self.command,
            "sent": self.sent,
            "code": self.code,
            "enhanced": self.enhanced,
            "text": self.text,
            "lines": list(self.lines),
            "at_s": round(self.at_s, 4),
            "message_id": self.message_id,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Exchange:
        return cls(doc["hop"], doc["session"], doc["command"], doc.get("sent"), doc.get("code"), doc.get("enhanced"),
                   doc.get("text", ""), tuple(doc.get("lines", [])), float(doc.get("at_s", 0.0)),
                   doc.get("message_id"))

    @property
    def pending(self) -> bool:
        """No reply yet, but the connection was still up when the capture was read: one may still come."""
        return self.code is None and self.text.startswith(PENDING_TEXT)

    def reply_str(self) -> str:
        if self.code is None and self.command == "TLS":
            return f"({self.text})"
        if self.code is None:
            return f"(no reply: {self.text})"
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        first_text = self.text.split("\n", 1)[0]
        if self.enhanced and first_text.startswith(self.enhanced):
            first_text = first_text[len(self.enhanced):].lstrip()
        parts.append(first_text)
        return " ".join(p for p in parts if p)


@dataclass
class Transcript:
    """Every exchange of one session, in order. ``closed`` tells whether and how the session ended early."""

    hop: str
    session: int
    exchanges: list[Exchange] = field(default_factory=list)
    message_id: str | None = None
    message_bytes: bytes | None = None  # the message as sent (before dot-stuffing)
    closed: bool = False  # the connection is known to have ended (for hops seen on the wire)

    def first(self, command: str) -> Exchange | None:
        return next((e for e in self.exchanges if e.command == command), None)

    def all(self, command: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.command == command]

    def transactions(self) -> list[Transaction]:
        """The mail transactions of this session (RFC 5321 3.3): each from MAIL to the reply after
        its message (END-OF-DATA, BDAT LAST), or to the RSET/MAIL/QUIT that abandoned it."""
        out: list[Transaction] = []
        current: list[Exchange] | None = None

        def close(ended: bool = True) -> None:
            if current:
                out.append(Transaction(self.hop, self.session, len(out) + 1, tuple(current), ended))

        for e in self.exchanges:
            if e.command == "MAIL":
                close()
                current = [e]
            elif current is not None and e.command in ("RSET", "QUIT", "EHLO", "HELO", "STARTTLS", "TLS"):
                if e.command == "RSET":
                    # The RSET is the transaction's last exchange: it is over once its reply is in (a
                    # capture read between the two would judge, and report, "RSET: no reply yet").
                    current.append(e)
                    close(ended=not e.pending)
                else:
                    close()
                current = None
            elif current is not None:
                current.append(e)
                if e.command == "END-OF-DATA" or (e.command == "BDAT" and "LAST" in (e.sent or "").upper()):
                    close(ended=not e.pending)
                    current = None
        close(ended=False)
        return out

    def connection_stages(self) -> list[Exchange]:
        """The exchanges outside any transaction: the greeting, EHLO/HELO, STARTTLS and its handshake, QUIT."""
        return [e for e in self.exchanges if e.command in ("CONNECT", "EHLO", "HELO", "QUIT", "STARTTLS", "TLS")]


def address_in(sent: str | None) -> str:
    """The address of ``MAIL FROM:<a> SIZE=1`` / ``RCPT TO:<b> ORCPT=...``."""
    sent = sent or ""
    start, end = sent.find("<"), sent.find(">")
    return sent[start + 1:end] if 0 <= start < end else ""


@dataclass(frozen=True)
class Transaction:
    """One mail transaction of a session: MAIL, its RCPTs, DATA and the reply after the message (or the
    RSET that abandoned it). ``number`` counts transactions within the session from 1."""

    hop: str
    session: int
    number: int
    exchanges: tuple[Exchange, ...]
    # Its outcome is known: a reply after the message, or a command that abandoned it (RSET, QUIT, a new
    # MAIL) was seen. A transaction still waiting for a reply is not ended (a capture read mid-way).
    ended: bool = False

    @property
    def mail_from(self) -> str:
        return address_in(self.exchanges[0].sent) if self.exchanges else ""

    @property
    def recipients(self) -> list[str]:
        return [address_in(e.sent) for e in self.exchanges if e.command == "RCPT"]

    @property
    def message_id(self) -> str | None:
        return next((e.message_id for e in self.exchanges if e.message_id), None)

    @property
    def complete(self) -> bool:
        return self.ended

    def first(self, command: str) -> Exchange | None:
        return next((e for e in self.exchanges if e.command == command), None)
