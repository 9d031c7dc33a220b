"""An MTA's queue, read and flushed with the MTA's own tools (its driver's commands, run in the container
through the engine), so deferral is asserted without waiting for retry timers."""

from __future__ import annotations

from docker.errors import DockerException

from harness.errors import InfrastructureError
from harness.mta import DRIVERS, MtaDriver
from harness.observe.maildir import same_message_id
from harness.observe.observations import QueuedMessage, SentMessage
from harness.topology.readiness import container_state
from harness.topology.topology import Host

__all__ = ["flush", "is_bounce_about", "queue_entries"]


class HostCommands:
    """A running host as a driver's CommandRunner (through its shell, standard output only)."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def __call__(self, argv: list[str]) -> str:
        try:
            # Standard output apart: a warning on stderr must not end up in JSON being parsed. Standard
            # error is kept for the message when the command fails (a reset script says why there).
            result = self.host.shell.run(argv)
        except DockerException as exc:
            raise InfrastructureError(f"`{' '.join(argv)}` on {self.host.role} failed: {exc}"
                                      + self._ended()) from exc
        output = result.stdout.decode("utf-8", "replace")
        if result.exit_code != 0:
            said = (result.stderr.decode("utf-8", "replace") + output).strip()
            raise InfrastructureError(f"`{' '.join(argv)}` on {self.host.role} exited {result.exit_code}: "
                                      f"{said[-500:] or '(it printed nothing)'}" + self._ended())
        return output

    def _ended(self) -> str:
        """When the container itself has ended: how, and its last log lines (the MTA's own words)."""
        state = container_state(self.host.container.get_wrapped_container())
        if state is None or not state.ended:
            return ""
        return f"\n{self.host.role} {state.describe()}; its last log lines:\n" + self.host.logs(tail=12).rstrip()


def _driver(host: Host) -> MtaDriver:
    if host.mta is None or host.mta not in DRIVERS:
        raise InfrastructureError(f"the harness cannot read the queue of {host.role} ({host.mta})")
    return DRIVERS[host.mta]


def flush(host: Host) -> None:
    _driver(host).flush(HostCommands(host))


def is_bounce_about(entry: QueuedMessage, message: SentMessage) -> bool:
    """A queued DSN about ``message``: a null reverse-path, and the message's Message-ID in its returned
    headers (or, when the MTA returned none, addressed to the message's sender)."""
    if entry.sender not in ("", None) or same_message_id(entry.message_id, message.message_id):
        return False
    # What it mentions besides its own Message-ID (which every DSN has): the message it returns.
    returned = [m for m in entry.mentions if entry.message_id is None or not same_message_id(m, entry.message_id)]
    if any(same_message_id(m, message.message_id) for m in returned):
        return True
    return not returned and any(r.lower() == message.mail_from.lower() for r in entry.recipients)


def queue_entries(host: Host, message: SentMessage, *of: str) -> list[QueuedMessage]:
    """The entries of ``host``'s queue (one listing) that are ``message`` (of "message") or a DSN about
    it ("bounce")."""
    def wanted(entry: QueuedMessage) -> bool:
        return (("message" in of and same_message_id(entry.message_id, message.message_id))
                or ("bounce" in of and is_bounce_about(entry, message)))

    return [m for m in _driver(host).queued(HostCommands(host)) if wanted(m)]
