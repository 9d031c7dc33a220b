"""Delivery status notifications (RFC 3464): a multipart/report with a message/delivery-status part,
parsed with Python's email package. Pure: the bytes come from a mailbox."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message

from harness.observe.maildir import same_message_id

_FOLD = re.compile(r"\r?\n[ \t]+")


@dataclass(frozen=True)
class DeliveryStatus:
    """One DSN: its per-message fields, one field mapping per recipient, and the Message-ID of the
    message it reports on (from the returned message or its headers), when it carries one."""

    per_message: dict[str, str]
    recipients: tuple[dict[str, str], ...]
    original_message_id: str | None

    def about(self, message_id: str) -> bool:
        return same_message_id(self.original_message_id, message_id)

    def summary(self) -> str:
        if not self.recipients:
            return "a DSN with no per-recipient fields"
        parts = []
        for r in self.recipients:
            fields = [f"{k}: {r[k]}" for k in ("Final-Recipient", "Action", "Status", "Remote-MTA",
                                                 "Diagnostic-Code") if k in r]
            parts.append(", ".join(fields))
        return "; ".join(parts)


def _fields(block: Message) -> dict[str, str]:
    return {key: _FOLD.sub(" ", str(value)).strip() for key, value in block.items()}


def _status_blocks(part: Message) -> list[dict[str, str]]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [_fields(block) for block in payload if isinstance(block, Message)]
    # Some parsers leave the part as text: split the field blocks at blank lines ourselves.
    text = payload if isinstance(payload, str) else ""
    blocks = []
    for chunk in re.split(r"\r?\n\s*\r?\n", text.strip()):
        block = message_from_bytes(chunk.encode() + b"\n", policy=policy.compat32)
        blocks.append(_fields(block))
    return blocks


def parse_dsn(raw: bytes) -> DeliveryStatus | None:
    """The delivery status in ``raw``, or None when it is not an RFC 3464 report."""
    msg = message_from_bytes(raw, policy=policy.compat32)
    if msg.get_content_type() != "multipart/report":
        return None
    status_part: Message | None = None
    original_id: str | None = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status" and status_part is None:
            status_part = part
        elif ctype in ("message/rfc822", "message/global") and original_id is None:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                original_id = inner[0].get("Message-ID")
        elif ctype == "text/rfc822-headers" and original_id is None:
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                original_id = message_from_bytes(text, policy=policy.compat32).get("Message-ID")
    if status_part is None:
        return None
    blocks = _status_blocks(status_part)
    if not blocks:
        return None
    per_message, recipients = blocks[0], tuple(b for b in blocks[1:] if b)
    return DeliveryStatus(per_message, recipients, str(original_id).strip() if original_id else None)


def unmatched_checks(status: DeliveryStatus, checks: list[tuple[str, str]]) -> list[str]:
    """The checks (field, regex) that no single recipient block satisfies together; [] = all hold.
    A field absent from the recipient block is looked up in the per-message fields."""
    if not checks:
        return []
    per_message = {k.lower(): v for k, v in status.per_message.items()}
    best: list[str] | None = None
    for block in status.recipients or ({},):
        fields = {**per_message, **{k.lower(): v for k, v in block.items()}}
        failed = [f"{name} /{pattern}/" for name, pattern in checks
                  if re.search(pattern, fields.get(name.lower(), "")) is None]
        if not failed:
            return []
        if best is None or len(failed) < len(best):
            best = failed
    return best or []
