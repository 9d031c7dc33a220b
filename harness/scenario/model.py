"""Frozen models of a validated scenario. Nothing here does I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Mark:
    """Where a node came from in its YAML file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Stage(enum.Enum):
    """The stages of a client SMTP session, in protocol order."""

    CONNECT = "CONNECT"
    EHLO = "EHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_DATA = "END-OF-DATA"
    QUIT = "QUIT"

    @property
    def yaml_key(self) -> str:
        return self.value.lower().replace("-", "_")


@dataclass(frozen=True)
class ReplyExpectation:
    """An expected SMTP reply: the code, optionally the enhanced status code, a regex the text must match."""

    code: int
    enhanced: str | None = None
    text: str | None = None
    mark: Mark | None = field(default=None, compare=False)

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(f"/{self.text}/")
        return " ".join(parts)


@dataclass(frozen=True)
class Message:
    """The message a session sends. ``headers`` keep their order; a Message-ID is added when absent."""

    headers: tuple[tuple[str, str], ...]
    body: str
    source_file: Path | None = None


@dataclass(frozen=True)
class SmtpSessionStep:
    host: str
    ehlo: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    message: Message
    expect: Mapping[Stage, ReplyExpectation]
    # RCPT expectations per recipient; a recipient without one falls back to expect[Stage.RCPT] if present.
    expect_rcpt: Mapping[str, ReplyExpectation]
    mark: Mark
    id: str | None = None
    timeout_s: float = 30.0

    kind = "smtp"


@dataclass(frozen=True)
class HeaderCheck:
    name: str
    pattern: str  # regex searched in the header's decoded value


@dataclass(frozen=True)
class DeliveryStep:
    """The message sent by session ``message_of`` (default: the latest session before this step)
    arrives in ``mailbox`` on ``host`` within ``within_s`` seconds."""

    host: str
    mailbox: str
    within_s: float
    headers: tuple[HeaderCheck, ...]
    body_intact: bool
    mark: Mark
    message_of: str | None = None

    kind = "delivery"


@dataclass(frozen=True)
class NoDeliveryStep:
    """No copy of the message arrives in ``mailbox`` (any mailbox when None) on ``host`` within ``within_s``."""

    host: str
    mailbox: str | None
    within_s: float
    mark: Mark
    message_of: str | None = None

    kind = "no_delivery"


Step = SmtpSessionStep | DeliveryStep | NoDeliveryStep


@dataclass(frozen=True)
class DnsRecord:
    """An extra record. ``value`` is zone-file rdata (``10 mx.example.test.``); for A records
    ``address_of`` names a role whose container address becomes the rdata instead."""

    name: str
    rtype: str
    value: str | None
    address_of: str | None
    ttl: int
    mark: Mark


@dataclass(frozen=True)
class RoleOverride:
    """A role pointed at another configuration directory (resolved relative to the scenario file)."""

    role: str
    config_dir: Path
    mark: Mark


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    description: str
    dns: tuple[DnsRecord, ...]
    roles: Mapping[str, RoleOverride]
    steps: tuple[Step, ...]
    mark: Mark
