"""Delivery status notifications (RFC 3464), parsed with Python's email package. Pure: the bytes come
from a mailbox.

A DSN is recognised by its ``message/delivery-status`` part (or RFC 6533's
``message/global-delivery-status``) wherever it sits in the MIME tree, not by a top-level
``multipart/report``: Postfix and Exim send ``multipart/report``, OpenSMTPD 6.8 sends
``multipart/mixed`` (see tests/unit/fixtures/dsn/README.md for the real ones).

What a DSN is about is read from the parts beside its delivery-status part: the returned message
(``message/rfc822``, ``message/global``) or its returned headers (``text/rfc822-headers``,
``message/global-headers``); plus the per-message ``Original-Envelope-Id`` and the per-recipient
``Final-Recipient``/``Original-Recipient``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message

from harness.observe.maildir import same_message_id

_FOLD = re.compile(r"\r?\n[ \t]+")
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_RETURNED_MESSAGE_TYPES = ("message/rfc822", "message/global")
_RETURNED_HEADER_TYPES = ("text/rfc822-headers", "message/global-headers")
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class DeliveryStatus:
    """One DSN: its per-message fields, one field mapping per recipient, the Message-ID of the message
    it reports on (from the returned message or its headers) when it carries one, and the
    per-message Original-Envelope-Id (the ENVID the message was sent with) when the MTA echoed one."""

    per_message: dict[str, str]
    recipients: tuple[dict[str, str], ...]
    original_message_id: str | None
    original_envelope_id: str | None = None

    @property
    def final_recipients(self) -> tuple[str, ...]:
        """The address of each recipient block's Final-Recipient (``rfc822; a@b`` -> ``a@b``)."""
        return tuple(addr for r in self.recipients if (addr := recipient_address(_get(r, "Final-Recipient"))))

    @property
    def original_recipients(self) -> tuple[str, ...]:
        """The address of each recipient block's Original-Recipient (the ORCPT), where there is one."""
        return tuple(addr for r in self.recipients if (addr := recipient_address(_get(r, "Original-Recipient"))))

    def about(self, message_id: str, *, envelope_id: str | None = None,
              recipients: Collection[str] = ()) -> str | None:
        """Why this DSN is about the message ``message_id`` (sent with ENVID ``envelope_id`` to
        ``recipients``), as a short phrase, or None when it is not.

        An identifier the DSN carries decides: a returned Message-ID or an echoed
        Original-Envelope-Id that differs from the message's (or that a message sent without one cannot
        have) means another message, whatever the recipients. Only a DSN that identifies no message at
        all (no returned headers, no envelope id) is matched by a Final-Recipient (or
        Original-Recipient) naming one of ``recipients``, compared case-insensitively."""
        if self.original_message_id is not None:
            if not same_message_id(self.original_message_id, message_id):
                return None
            if envelope_id is not None and self.original_envelope_id is not None \
                    and not same_envelope_id(self.original_envelope_id, envelope_id):
                return None
            return f"Message-ID {self.original_message_id} in the returned headers"
        if self.original_envelope_id is not None:
            # Echoed only when the client sent one (RFC 3464 2.2.1): a message sent without is not this one.
            if envelope_id is not None and same_envelope_id(self.original_envelope_id, envelope_id):
                return f"Original-Envelope-Id {self.original_envelope_id}"
            return None
        wanted = {a.strip().strip("<>").lower() for a in recipients}
        wanted.discard("")
        for field in ("Final-Recipient", "Original-Recipient"):
            for block in self.recipients:
                value = _get(block, field)
                addr = recipient_address(value)
                if addr is not None and addr.lower() in wanted:
                    kind = (value or "").partition(";")[0].strip() or "rfc822"
                    return f"{field} {kind};{addr}"
        return None

    def summary(self) -> str:
        if not self.recipients:
            return "a DSN with no per-recipient fields"
        parts = []
        for r in self.recipients:
            fields = [f"{k}: {r[k]}" for k in ("Final-Recipient", "Action", "Status", "Remote-MTA",
                                                 "Diagnostic-Code") if k in r]
            parts.append(", ".join(fields))
        return "; ".join(parts)


def recipient_address(value: str | None) -> str | None:
    """The address in a Final-Recipient/Original-Recipient value: ``rfc822; <a@b>`` -> ``a@b``
    (any address type; RFC 6533's ``utf-8;`` too). None for an absent or empty value."""
    if value is None:
        return None
    _, sep, addr = value.partition(";")
    addr = (addr if sep else value).strip().strip("<>").strip()
    return addr or None


def same_envelope_id(a: str, b: str) -> bool:
    """Whether two envelope ids are the same, either written as sent (xtext, RFC 3461: ``+2B``) or
    decoded as RFC 3464 asks for in the DSN."""
    forms_a = {a.strip(), _xtext_decode(a.strip())}
    forms_b = {b.strip(), _xtext_decode(b.strip())}
    return bool(forms_a & forms_b)


def _xtext_decode(value: str) -> str:
    return _XTEXT.sub(lambda m: chr(int(m[1], 16)), value)


def _get(block: dict[str, str], name: str) -> str | None:
    """A field of a block by name, case-insensitively."""
    lowered = name.lower()
    return next((v for k, v in block.items() if k.lower() == lowered), None)


def _fields(block: Message) -> dict[str, str]:
    # raw_items: the values as parsed; 8-bit text (UTF-8 addresses, RFC 6533) is kept as
    # surrogate escapes by the parser and decoded here, where items() would give U+FFFD.
    return {key: _FOLD.sub(" ", _text(value)).strip() for key, value in block.raw_items()}


def _text(value: object) -> str:
    return str(value).encode("ascii", "surrogateescape").decode("utf-8", "replace")


def _status_blocks(part: Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):
        # message/delivery-status: the parser makes each field block a message of its own. Other
        # message/* types (message/global-delivery-status) come as one message: the first block as
        # its headers, the other blocks as its body.
        blocks = []
        for block in payload:
            if isinstance(block, Message):
                blocks.append(_fields(block))
                rest = block.get_payload(decode=True)
                if isinstance(rest, bytes) and rest.strip():
                    blocks.extend(_split_blocks(rest.decode("utf-8", "replace")))
        return blocks
    raw = part.get_payload(decode=True)
    return _split_blocks(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else "")


def _split_blocks(text: str) -> list[dict[str, str]]:
    """Field blocks separated by blank lines, parsed ourselves."""
    blocks = []
    for chunk in re.split(r"\r?\n\s*\r?\n", text.strip()):
        block = message_from_bytes(chunk.encode() + b"\n", policy=policy.compat32)
        blocks.append(_fields(block))
    return blocks


def _parts_with_parent(part: Message, parent: Message | None = None) -> Iterator[tuple[Message, Message | None]]:
    """Every part of the tree, depth first in document order, with the multipart holding it (None for
    the top and for a message enclosed in a message/rfc822 part, which starts a tree of its own)."""
    yield part, parent
    payload = part.get_payload()
    if part.is_multipart() and isinstance(payload, list):
        holder = part if part.get_content_maintype() == "multipart" else None
        for child in payload:
            if isinstance(child, Message):
                yield from _parts_with_parent(child, holder)


def _find_status_part(msg: Message) -> tuple[Message, Message | None] | None:
    for part, parent in _parts_with_parent(msg):
        if part.get_content_type() in _STATUS_TYPES:
            return part, parent
    return None


def _returned_message_id(siblings: list[Message]) -> str | None:
    """The Message-ID of the returned message among the parts beside the delivery-status part: from
    a returned message or returned headers. None of the project's MTAs quotes the returned headers in
    a text/plain part (OpenSMTPD's notification says "Below is a copy of the original message:" and
    puts it in a text/rfc822-headers part), so text parts are not searched: a Message-ID quoted in a
    notification text could be anything's."""
    for part in siblings:
        if part.get_content_type() not in _RETURNED_MESSAGE_TYPES + _RETURNED_HEADER_TYPES:
            continue
        # message/* parts (message/rfc822, message/global, message/global-headers) are parsed into
        # a message; text/rfc822-headers stays text.
        inner = part.get_payload()
        if isinstance(inner, list):
            value = inner[0].get("Message-ID") if inner and isinstance(inner[0], Message) else None
            found = str(value).strip() if value else None
        else:
            text = part.get_payload(decode=True)
            found = _header_message_id(text) if isinstance(text, bytes) else None
        if found:
            return found
    return None


def _header_message_id(text: bytes) -> str | None:
    value = message_from_bytes(text, policy=policy.compat32).get("Message-ID")
    return str(value).strip() if value else None


def _parse(raw: bytes) -> Message:
    return message_from_bytes(raw, policy=policy.compat32)


def is_dsn(raw: bytes) -> bool:
    """Whether ``raw`` has a message/delivery-status part anywhere in its MIME tree."""
    return _find_status_part(_parse(raw)) is not None


def parse_dsn(raw: bytes) -> DeliveryStatus | None:
    """The delivery status in ``raw``, or None when it has no message/delivery-status part (or an
    empty one). The first such part in document order is the report; what it is about is read from
    the parts beside it."""
    found = _find_status_part(_parse(raw))
    if found is None:
        return None
    status_part, parent = found
    blocks = _status_blocks(status_part)
    if not blocks or not any(blocks):
        return None
    per_message, recipients = blocks[0], tuple(b for b in blocks[1:] if b)
    siblings: list[Message] = []
    if parent is not None:
        payload = parent.get_payload()
        if isinstance(payload, list):
            siblings = [p for p in payload if isinstance(p, Message) and p is not status_part]
    envid = _get(per_message, "Original-Envelope-Id")
    return DeliveryStatus(per_message, recipients, _returned_message_id(siblings), envid or None)


def unmatched_checks(status: DeliveryStatus, checks: list[tuple[str, str]]) -> list[str]:
    """The checks (field, regex) that no single recipient block satisfies together; [] = all hold."""
    return unmatched_fields(status.per_message, status.recipients, checks)


def unmatched_fields(per_message: Mapping[str, str], recipients: Sequence[Mapping[str, str]],
                     checks: list[tuple[str, str]]) -> list[str]:
    """The checks (field, regex) that no single recipient block satisfies together; [] = all hold.
    A field absent from the recipient block is looked up in the per-message fields."""
    if not checks:
        return []
    message_fields = {k.lower(): v for k, v in per_message.items()}
    best: list[str] | None = None
    for block in recipients or ({},):
        fields = {**message_fields, **{k.lower(): v for k, v in block.items()}}
        failed = [f"{name} /{pattern}/" for name, pattern in checks
                  if re.search(pattern, fields.get(name.lower(), "")) is None]
        if not failed:
            return []
        if best is None or len(failed) < len(best):
            best = failed
    return best or []
