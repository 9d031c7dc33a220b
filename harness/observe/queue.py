"""An MTA's queue, read and flushed with the MTA's own tools through the engine (docker exec), so
deferral is asserted without waiting for retry timers."""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from docker.errors import DockerException

from harness.errors import InfrastructureError
from harness.observe.maildir import same_message_id
from harness.observe.observations import QueuedMessage, SentMessage
from harness.topology.topology import Host

# Message-IDs named anywhere in a queued message: its own header, and a DSN's returned headers.
_MENTION = re.compile(r"^(?:Message-ID|References|In-Reply-To):[ \t]*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)


def _mentions(content: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_MENTION.findall(content)))


def _own_message_id(content: str) -> str | None:
    m = re.search(r"^Message-ID:\s*(\S+)", content, re.IGNORECASE | re.MULTILINE)
    return m.group(1) if m else None


def _exec(host: Host, argv: list[str]) -> str:
    try:
        # stdout only: a warning on stderr must not end up in JSON being parsed.
        result = host.container.get_wrapped_container().exec_run(argv, stdout=True, stderr=False)
    except DockerException as exc:
        raise InfrastructureError(f"`{' '.join(argv)}` on {host.role} failed: {exc}") from exc
    output = bytes(result.output or b"").decode("utf-8", "replace")
    if result.exit_code != 0:
        raise InfrastructureError(f"`{' '.join(argv)}` on {host.role} exited {result.exit_code}: {output[-500:]}")
    return output


def _json_lines(output: str) -> list[dict[str, Any]]:
    """``postqueue -j`` / ``mta-queue list``: one JSON object per line; anything else is not ours."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


class PostfixQueue:
    def flush(self, host: Host) -> None:
        _exec(host, ["postqueue", "-f"])

    def messages(self, host: Host) -> list[QueuedMessage]:
        found = []
        for entry in _json_lines(_exec(host, ["postqueue", "-j"])):
            queue_id = str(entry["queue_id"])
            recipients = entry.get("recipients", [])
            reasons = tuple(str(r["delay_reason"]) for r in recipients if r.get("delay_reason"))
            # Headers and body: a queued DSN names the message it is about in its returned headers.
            content = _exec(host, ["postcat", "-bh", "-q", queue_id])
            found.append(QueuedMessage(queue_id, str(entry["queue_name"]), _own_message_id(content), reasons,
                                       str(entry.get("sender", "")),
                                       tuple(str(r.get("address", "")) for r in recipients), _mentions(content)))
        return found


class OpenSmtpdQueue:
    """``smtpctl show queue`` lines: envelope id|family|type|flags|sender|orig rcpt|dest|created|expires|
    last try|attempts|state|next|last error. An envelope still pending after a try is deferred."""

    def flush(self, host: Host) -> None:
        _exec(host, ["smtpctl", "schedule", "all"])

    def messages(self, host: Host) -> list[QueuedMessage]:
        found = []
        for line in _exec(host, ["smtpctl", "show", "queue"]).splitlines():
            fields = line.split("|")
            if len(fields) < 14:
                continue
            envelope, attempts, state, error = fields[0], fields[10], fields[11], "|".join(fields[13:])
            sender, recipient = fields[4], fields[6] or fields[5]
            if state == "inflight":
                named = "active"
            else:
                named = "deferred" if attempts.isdigit() and int(attempts) > 0 else "incoming"
            shown = _exec(host, ["smtpctl", "show", "message", envelope])
            found.append(QueuedMessage(envelope, named, _own_message_id(shown), (error,) if error.strip() else (),
                                       "" if sender in ("", "<>", "MAILER-DAEMON") else sender, (recipient,),
                                       _mentions(shown)))
        return found


class EximQueue:
    """The Exim image's ``mta-queue``: ``flush`` runs ``exim4 -qff``; ``list`` prints a JSON line per
    message (state frozen, deferred or active; Message-ID; per-recipient delay reasons)."""

    def flush(self, host: Host) -> None:
        _exec(host, ["mta-queue", "flush"])

    def messages(self, host: Host) -> list[QueuedMessage]:
        found = []
        for entry in _json_lines(_exec(host, ["mta-queue", "list"])):
            reasons = [str(r["delay_reason"]) for r in entry.get("recipients", []) if r.get("delay_reason")]
            if entry.get("last_error"):
                reasons.append(str(entry["last_error"]))
            state = "frozen" if entry.get("frozen") else str(entry["queue_name"])
            queue_id = str(entry["queue_id"])
            content = _exec(host, ["exim4", "-Mvh", queue_id]) + _exec(host, ["exim4", "-Mvb", queue_id])
            sender = str(entry.get("sender") or "")
            found.append(QueuedMessage(queue_id, state, entry.get("message_id"), tuple(reasons),
                                       "" if sender == "<>" else sender,
                                       tuple(str(r.get("address", "")) for r in entry.get("recipients", [])),
                                       _mentions(content)))
        return found


class MtaQueue(Protocol):
    def flush(self, host: Host) -> None: ...

    def messages(self, host: Host) -> list[QueuedMessage]: ...


QUEUES: dict[str, MtaQueue] = {"postfix": PostfixQueue(), "exim": EximQueue(), "opensmtpd": OpenSmtpdQueue()}


def queue_of(host: Host) -> MtaQueue:
    if host.mta is None or host.mta not in QUEUES:
        raise InfrastructureError(f"the harness cannot read the queue of {host.role} ({host.mta})")
    return QUEUES[host.mta]


def find_queued(host: Host, message_id: str) -> list[QueuedMessage]:
    return [m for m in queue_of(host).messages(host) if same_message_id(m.message_id, message_id)]


def is_bounce_about(entry: QueuedMessage, message: SentMessage) -> bool:
    """A queued DSN about ``message``: a null reverse-path, and the message's Message-ID in its returned
    headers (or, when the MTA returned none, addressed to the message's sender)."""
    if entry.sender not in ("", None) or same_message_id(entry.message_id, message.message_id):
        return False
    if any(same_message_id(m, message.message_id) for m in entry.mentions):
        return True
    return not entry.mentions and any(r.lower() == message.mail_from.lower() for r in entry.recipients)


def queue_entries(host: Host, message: SentMessage, of: str) -> list[QueuedMessage]:
    """The entries of ``host``'s queue that are ``message`` (of="message") or a DSN about it ("bounce")."""
    entries = queue_of(host).messages(host)
    if of == "bounce":
        return [m for m in entries if is_bounce_about(m, message)]
    return [m for m in entries if same_message_id(m.message_id, message.message_id)]
