"""Messages in Maildirs. Every MTA image stores mail as /var/mail/<domain>/<localpart>/{new,cur}/<file>."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage

MAIL_ROOT = "/var/mail"
_PATH = re.compile(r"(?:^|/)mail/(?P<domain>[^/]+)/(?P<local>[^/]+)/(?:new|cur)/[^/]+$")


@dataclass(frozen=True)
class DeliveredMessage:
    host: str
    mailbox: str  # local@domain, lower case (as steps name mailboxes): a configuration may keep Bob/
    path: str
    raw: bytes

    def parsed(self) -> EmailMessage:
        msg = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    @property
    def message_id(self) -> str | None:
        return header_value(self.raw, "Message-ID")


def messages_in(host: str, files: Mapping[str, bytes]) -> list[DeliveredMessage]:
    """The delivered messages among ``files`` (archive paths -> content) of one host's mail root."""
    found = []
    for path, raw in sorted(files.items()):
        m = _PATH.search(path)
        if m:
            # Compared case aside: a copy in .../Bob/new/ is bob@'s to a step, never in no mailbox at all.
            found.append(DeliveredMessage(host, f"{m['local']}@{m['domain']}".lower(), path, raw))
    return found


def header_value(raw: bytes, name: str) -> str | None:
    head = split_message(raw)[0]
    msg = message_from_bytes(head + b"\n", policy=policy.default)
    value = msg.get(name)
    return None if value is None else str(value).strip()


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(header block, body) with line endings normalised to LF: Maildir files use LF, SMTP uses CRLF,
    and "byte for byte" means the same bytes modulo that storage convention."""
    text = raw.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        return text, b""
    return head, body


def same_message_id(a: str | None, b: str) -> bool:
    return a is not None and a.strip("<> ").lower() == b.strip("<> ").lower()
