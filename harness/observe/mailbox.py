"""Watch a host's Maildirs for a message, bounded in time. One archive read per poll, no exec."""

from __future__ import annotations

import time
from collections.abc import Callable

from harness.observe.maildir import MAIL_ROOT, DeliveredMessage, messages_in, same_message_id
from harness.topology.topology import Host

POLL_INTERVAL_S = 0.2


def find_message(host: Host, message_id: str, mailbox: str | None) -> list[DeliveredMessage]:
    return [m for m in messages_in(host.role, host.read_tree(MAIL_ROOT))
            if same_message_id(m.message_id, message_id) and (mailbox is None or m.mailbox == mailbox.lower())]


def wait_for_message(host: Host, message_id: str, mailbox: str | None, within_s: float,
                     *, sleep: Callable[[float], None] = time.sleep) -> list[DeliveredMessage]:
    """Poll until the message is there (return at once) or ``within_s`` has passed (return what is
    there then, usually nothing). A "no delivery" check waits the whole bound by construction."""
    deadline = time.monotonic() + within_s
    while True:
        found = find_message(host, message_id, mailbox)
        if found or time.monotonic() >= deadline:
            return found
        sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
