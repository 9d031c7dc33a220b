"""Replies as data: what was sent and what came back, for one SMTP session on one hop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Commands as they appear in results; DATA is the 354 intermediate reply, END-OF-DATA the reply after the dot.
COMMANDS = ("CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-DATA", "RSET", "NOOP", "QUIT",
            "STARTTLS", "AUTH")


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
        }

    def reply_str(self) -> str:
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
