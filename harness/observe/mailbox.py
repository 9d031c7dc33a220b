"""Watch a host's Maildirs for a message, bounded in time. One archive read per poll, no exec."""

from __future__ import annotations

from harness.observe.maildir import MAIL_ROOT, DeliveredMessage, messages_in, same_message_id
from harness.observe.polling import poll_until
from harness.topology.topology import Host


def find_message(host: Host, message_id: str, mailbox: str | None) -> list[DeliveredMessage]:
    return [m for m in messages_in(host.role, host.read_tree(MAIL_ROOT))
            if same_message_id(m.message_id, message_id) and (mailbox is None or m.mailbox == mailbox.lower())]


def wait_for_message(host: Host, message_id: str, mailbox: str | None, within_s: float
                     ) -> list[DeliveredMessage]:
    """Poll until the message is there (return at once) or ``within_s`` has passed (return what is
    there then, usually nothing). A "no delivery" check waits the whole bound by construction."""
    found: list[DeliveredMessage] = []

    def probe() -> bool:
        found[:] = find_message(host, message_id, mailbox)
        return bool(found)

    poll_until(within_s, probe)
    return found
