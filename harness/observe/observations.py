"""What each step observed, as typed values: the input of every judge and every report.

Pure data. Each observation is about the scenario's own message (``SentMessage``): a hop's transaction
that carried it, the copies of it in a mailbox, the DSNs about it, its queue entries. Every value
round-trips through JSON (``to_json`` / ``observation_from_json``), so judging is tested on
observations recorded from real runs, without Docker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.observe.tlslog import HopTlsLog
from harness.smtp.transcript import TLS_ESTABLISHED, TLS_FAILED, Exchange

__all__ = [
    "BounceObservation",
    "ConnectionAttempt",
    "ConnectionObservation",
    "DeliveredCopy",
    "FaultObservation",
    "FlushObservation",
    "FoundDsn",
    "HopObservation",
    "MailboxObservation",
    "Observation",
    "QueueObservation",
    "QueuedMessage",
    "SentMessage",
    "SessionObservation",
    "observation_from_json",
    "tls_decided",
]


def _bytes_to_json(raw: bytes) -> str:
    # latin-1 maps every byte to one code point: an exact round trip, readable for ASCII mail.
    return raw.decode("latin-1")


def _bytes_from_json(text: str) -> bytes:
    return text.encode("latin-1")


def _exchanges(docs: list[dict[str, Any]]) -> tuple[Exchange, ...]:
    return tuple(Exchange.from_json(d) for d in docs)


@dataclass(frozen=True)
class SentMessage:
    """The message an smtp step sent, as the later steps that are about it need it."""

    step_id: str | None
    hop: str
    session: int
    message_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    envelope_id: str | None
    content: bytes
    # The client's reply to the final dot, if the session got that far ("250 2.0.0 Ok: queued as X").
    end_of_data: Exchange | None
    sent_at_s: float

    @property
    def refused(self) -> bool:
        """The MTA certainly does not have it: the session never sent the message, or the reply to the
        final dot refused it. (No reply at all leaves it unknown: the MTA may have taken it.)"""
        eod = self.end_of_data
        return eod is None or (eod.code is not None and eod.code >= 400)

    @property
    def accepted(self) -> bool:
        return self.end_of_data is not None and self.end_of_data.code is not None \
            and 200 <= self.end_of_data.code < 300

    def to_json(self) -> dict[str, Any]:
        return {"step_id": self.step_id, "hop": self.hop, "session": self.session, "message_id": self.message_id,
                "mail_from": self.mail_from, "rcpt_to": list(self.rcpt_to), "envelope_id": self.envelope_id,
                "content": _bytes_to_json(self.content),
                "end_of_data": self.end_of_data.to_json() if self.end_of_data else None,
                "sent_at_s": self.sent_at_s}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SentMessage:
        return cls(d["step_id"], d["hop"], d["session"], d["message_id"], d["mail_from"], tuple(d["rcpt_to"]),
                   d.get("envelope_id"), _bytes_from_json(d["content"]),
                   Exchange.from_json(d["end_of_data"]) if d.get("end_of_data") else None, d["sent_at_s"])


@dataclass(frozen=True)
class SessionObservation:
    """The client's own session: every exchange, as its client recorded it."""

    hop: str
    session: int
    exchanges: tuple[Exchange, ...]
    message_id: str | None

    kind = "smtp"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "hop": self.hop, "session": self.session, "message_id": self.message_id,
                "exchanges": [e.to_json() for e in self.exchanges]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SessionObservation:
        return cls(d["hop"], d["session"], _exchanges(d["exchanges"]), d.get("message_id"))


@dataclass(frozen=True)
class HopObservation:
    """A hop as seen on the wire, narrowed to the message: the connection stages (greeting, EHLO, QUIT)
    of the session that carried it and the one transaction (MAIL .. END-OF-DATA/RSET) that did.

    ``matched_by`` says how the transaction was tied to the message ("Message-ID <..>", "envelope
    a -> b", "session 2 as asked", "connection without a transaction"); None when nothing matched.
    ``transaction`` is None for a session that never got to MAIL (a 521 greeting, a refused connection).
    """

    hop: str
    session: int | None
    transaction: int | None
    matched_by: str | None
    exchanges: tuple[Exchange, ...]
    closed: bool
    hops_seen: tuple[str, ...]
    # Other transactions seen on the hop (session, number, Message-ID): what was not ours, for the report.
    others: tuple[tuple[int, int, str | None], ...] = ()
    # The transaction has its outcome (a reply after the message, an RSET, a refusal), or the session ended.
    complete: bool = False
    # Sessions on the hop (any message) whose MAIL crossed the wire in clear.
    in_clear: tuple[int, ...] = ()
    # What the sending MTA logged about the message's delivery: its TLS session and the reply.
    tls_log: HopTlsLog | None = None
    # Nothing matched because each of these ("session 2", "session 1 #2") could be the message's (another
    # message of the scenario was in flight) and they differ: which one it was is not known.
    could_be: tuple[str, ...] = ()

    kind = "hop"

    @property
    def tls(self) -> Exchange | None:
        """The session's TLS exchange (after a 220 to STARTTLS), if it got that far."""
        return next((e for e in self.exchanges if e.command == "TLS"), None)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": self.kind, "hop": self.hop, "session": self.session, "transaction": self.transaction,
            "matched_by": self.matched_by, "closed": self.closed, "hops_seen": list(self.hops_seen),
            "others": [list(o) for o in self.others], "complete": self.complete,
            "exchanges": [e.to_json() for e in self.exchanges]}
        # Only when there is something to say: results of hops without TLS read as they always did.
        if self.in_clear:
            doc["in_clear"] = list(self.in_clear)
        if self.tls_log is not None:
            doc["tls_log"] = self.tls_log.to_json()
        if self.could_be:
            doc["could_be"] = list(self.could_be)
        return doc

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HopObservation:
        return cls(d["hop"], d.get("session"), d.get("transaction"), d.get("matched_by"), _exchanges(d["exchanges"]),
                   bool(d.get("closed")), tuple(d.get("hops_seen", [])),
                   tuple((o[0], o[1], o[2]) for o in d.get("others", [])), bool(d.get("complete")),
                   tuple(d.get("in_clear", [])),
                   HopTlsLog.from_json(d["tls_log"]) if d.get("tls_log") else None, tuple(d.get("could_be", [])))


def tls_decided(obs: HopObservation) -> bool:
    """The hop's handshake has an outcome on the wire (established or failed), or the session that
    carried the message ended without one."""
    exchange = obs.tls
    if exchange is None:
        return obs.complete or obs.closed
    return exchange.text.startswith((TLS_ESTABLISHED, TLS_FAILED))


@dataclass(frozen=True)
class DeliveredCopy:
    mailbox: str
    path: str
    raw: bytes

    def to_json(self) -> dict[str, Any]:
        return {"mailbox": self.mailbox, "path": self.path, "raw": _bytes_to_json(self.raw)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeliveredCopy:
        return cls(d["mailbox"], d["path"], _bytes_from_json(d["raw"]))


@dataclass(frozen=True)
class MailboxObservation:
    """The copies of the message (by its Message-ID) in one mailbox (or every mailbox) of a host, and
    whether any host of the topology still had it queued when the watch ended."""

    host: str
    mailbox: str | None
    message: SentMessage
    copies: tuple[DeliveredCopy, ...]
    waited_s: float
    still_queued: tuple[str, ...] = ()  # "relay 4XbT1 deferred": a copy may still come

    kind = "mailbox"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "host": self.host, "mailbox": self.mailbox, "message": self.message.to_json(),
                "copies": [c.to_json() for c in self.copies], "waited_s": round(self.waited_s, 3),
                "still_queued": list(self.still_queued)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MailboxObservation:
        return cls(d["host"], d.get("mailbox"), SentMessage.from_json(d["message"]),
                   tuple(DeliveredCopy.from_json(c) for c in d["copies"]), d["waited_s"],
                   tuple(d.get("still_queued", [])))


@dataclass(frozen=True)
class FoundDsn:
    """A DSN about the message: where it was, why it is about the message, its fields."""

    path: str
    about: str
    per_message: dict[str, str]
    recipients: tuple[dict[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "about": self.about, "per_message": self.per_message,
                "recipients": list(self.recipients)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FoundDsn:
        return cls(d["path"], d["about"], dict(d["per_message"]), tuple(dict(r) for r in d["recipients"]))

    def field(self, name: str) -> str | None:
        """A recipient field (of the first recipient block that has it), else the per-message one."""
        for block in self.recipients:
            for key, value in block.items():
                if key.lower() == name.lower():
                    return value
        return next((v for k, v in self.per_message.items() if k.lower() == name.lower()), None)

    def summary(self) -> str:
        fields = [f"{k}: {v}" for k in ("Final-Recipient", "Action", "Status", "Remote-MTA", "Diagnostic-Code")
                  if (v := self.field(k)) is not None]
        return ", ".join(fields) or "a DSN with no per-recipient fields"


@dataclass(frozen=True)
class BounceObservation:
    """The DSNs about the message in one mailbox of a host."""

    host: str
    mailbox: str
    message_id: str
    dsns: tuple[FoundDsn, ...]
    waited_s: float

    kind = "bounce"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "host": self.host, "mailbox": self.mailbox, "message_id": self.message_id,
                "dsns": [x.to_json() for x in self.dsns], "waited_s": round(self.waited_s, 3)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BounceObservation:
        return cls(d["host"], d["mailbox"], d["message_id"], tuple(FoundDsn.from_json(x) for x in d["dsns"]),
                   d["waited_s"])


@dataclass(frozen=True)
class QueuedMessage:
    """One queue entry as the MTA's own tool lists it."""

    queue_id: str
    state: str  # deferred, active, incoming, hold, frozen ... as the MTA names it
    message_id: str | None
    reasons: tuple[str, ...]
    sender: str | None = None  # "" for a bounce (null reverse-path)
    recipients: tuple[str, ...] = ()
    # Every Message-ID the entry's content names (its own, and a DSN's returned headers'): how a
    # queued bounce is tied to the message it is about.
    mentions: tuple[str, ...] = ()

    def summary(self) -> str:
        reason = f": {self.reasons[0]}" if self.reasons else ""
        return f"{self.queue_id} {self.state}{reason}"

    def to_json(self) -> dict[str, Any]:
        return {"queue_id": self.queue_id, "state": self.state, "message_id": self.message_id,
                "reasons": list(self.reasons), "sender": self.sender, "recipients": list(self.recipients),
                "mentions": list(self.mentions)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QueuedMessage:
        return cls(d["queue_id"], d["state"], d.get("message_id"), tuple(d.get("reasons", [])), d.get("sender"),
                   tuple(d.get("recipients", [])), tuple(d.get("mentions", [])))


@dataclass(frozen=True)
class QueueObservation:
    """The entries of a host's queue that are the message (``of: message``) or a DSN about it
    (``of: bounce``)."""

    host: str
    of: str
    entries: tuple[QueuedMessage, ...]
    waited_s: float

    kind = "queue"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "host": self.host, "of": self.of, "entries": [e.to_json() for e in self.entries],
                "waited_s": round(self.waited_s, 3)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> QueueObservation:
        return cls(d["host"], d["of"], tuple(QueuedMessage.from_json(e) for e in d["entries"]), d["waited_s"])


@dataclass(frozen=True)
class ConnectionAttempt:
    """A TCP connection (or only its SYN) seen on the wire, named by role where known; or, with ``note``,
    an attempt that never put a SYN on the wire: the source asked for the address by ARP, and nothing
    but an unanswered request (or one answered too late) followed (port 0: not known)."""

    source: str  # role, or address when unknown
    destination: str
    destination_address: str
    port: int
    at_s: float
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "destination": self.destination,
                               "destination_address": self.destination_address, "port": self.port,
                               "at_s": round(self.at_s, 4)}
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ConnectionAttempt:
        return cls(d["source"], d["destination"], d["destination_address"], d["port"], d["at_s"], d.get("note", ""))

    def where(self) -> str:
        return f"{self.destination_address}: {self.note}" if self.note else f"{self.destination_address}:{self.port}"


@dataclass(frozen=True)
class ConnectionObservation:
    """The connections from ``source`` to the addresses in question (``what`` names them); ``lost``: the
    roles whose capture dropped packets, with how many (none seen then proves nothing)."""

    source: str
    what: str
    attempts: tuple[ConnectionAttempt, ...]
    waited_s: float
    lost: tuple[tuple[str, int], ...] = ()

    kind = "connections"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "source": self.source, "what": self.what,
                               "attempts": [a.to_json() for a in self.attempts], "waited_s": round(self.waited_s, 3)}
        if self.lost:
            out["lost"] = [list(r) for r in self.lost]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ConnectionObservation:
        return cls(d["source"], d["what"], tuple(ConnectionAttempt.from_json(a) for a in d["attempts"]),
                   d["waited_s"], tuple((str(r), int(n)) for r, n in d.get("lost", ())))


@dataclass(frozen=True)
class FlushObservation:
    host: str
    notes: tuple[str, ...] = field(default=())

    kind = "flush"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "host": self.host, "notes": list(self.notes)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FlushObservation:
        return cls(d["host"], tuple(d.get("notes", [])))


@dataclass(frozen=True)
class FaultObservation:
    """What a fault step did: ``error`` is None when the role is in the state asked for (and, for a
    role brought back, greets or answers again)."""

    role: str
    action: str
    at_s: float  # when the fault was done, on the scenario's clock
    took_s: float  # until the role was in that state
    error: str | None = None

    kind = "fault"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "role": self.role, "action": self.action, "at_s": round(self.at_s, 3),
                "took_s": round(self.took_s, 3), "error": self.error}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FaultObservation:
        return cls(d["role"], d["action"], float(d["at_s"]), float(d["took_s"]), d.get("error"))


Observation = (SessionObservation | HopObservation | MailboxObservation | BounceObservation | QueueObservation
               | ConnectionObservation | FlushObservation | FaultObservation)

_KINDS: dict[str, Any] = {c.kind: c for c in (SessionObservation, HopObservation, MailboxObservation,
                                               BounceObservation, QueueObservation, ConnectionObservation,
                                               FlushObservation, FaultObservation)}


def observation_from_json(d: dict[str, Any]) -> Observation:
    cls = _KINDS[d["kind"]]
    obs: Observation = cls.from_json(d)
    return obs
