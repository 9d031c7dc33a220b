"""An MTA's queue, read and flushed with the MTA's own tools through the engine (docker exec), so
deferral is asserted without waiting for retry timers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from docker.errors import DockerException

from harness.errors import InfrastructureError
from harness.observe.maildir import same_message_id
from harness.topology.topology import Host


@dataclass(frozen=True)
class QueuedMessage:
    queue_id: str
    state: str  # deferred, active, incoming, hold, ... as the MTA names it
    message_id: str | None
    reasons: tuple[str, ...]

    def summary(self) -> str:
        reason = f": {self.reasons[0]}" if self.reasons else ""
        return f"{self.queue_id} {self.state}{reason}"


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
            reasons = tuple(str(r["delay_reason"]) for r in entry.get("recipients", []) if r.get("delay_reason"))
            headers = _exec(host, ["postcat", "-h", "-q", queue_id])
            m = re.search(r"^Message-ID:\s*(\S+)", headers, re.IGNORECASE | re.MULTILINE)
            found.append(QueuedMessage(queue_id, str(entry["queue_name"]), m.group(1) if m else None, reasons))
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
            if state == "inflight":
                named = "active"
            else:
                named = "deferred" if attempts.isdigit() and int(attempts) > 0 else "incoming"
            shown = _exec(host, ["smtpctl", "show", "message", envelope])
            m = re.search(r"^Message-ID:\s*(\S+)", shown, re.IGNORECASE | re.MULTILINE)
            found.append(QueuedMessage(envelope, named, m.group(1) if m else None,
                                       (error,) if error.strip() else ()))
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
            found.append(QueuedMessage(str(entry["queue_id"]), state, entry.get("message_id"), tuple(reasons)))
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
