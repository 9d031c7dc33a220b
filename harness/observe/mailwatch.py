"""Mail arriving in a host's Maildirs, noticed as it is written: ``inotifywait -m -r /var/mail`` runs in
the MTA's container (inotify-tools is in every MTA image) and every event it prints wakes whoever
waits. The mailbox is still read by one archive call per look; the watch only ends the sleep between
looks early, so a missed event (a directory created and written in the same instant) costs one poll
interval, never a wrong verdict."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence

import docker
from docker.errors import DockerException

from harness.observe.maildir import MAIL_ROOT

__all__ = ["MailWatch"]

START_TIMEOUT_S = 5.0


class MailWatch:
    """Wakes ``changed`` on every file created, written or moved under the host's mail root."""

    def __init__(self, client: docker.DockerClient, container_id: str, what: str, *,
                 prefix: Sequence[str] = ()) -> None:
        """``prefix``: what the watch runs under in the container (an MTA role's ``confined``)."""
        self.changed = threading.Event()
        self._prefix = list(prefix)
        self._client = client
        self._container_id = container_id
        self._what = what
        self.running = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"mailwatch-{what}", daemon=True)

    def start(self) -> MailWatch:
        """Start the watch; back once its process runs in the container (or could not be started). A
        fault step's pause must not freeze the container while runc is still starting that process:
        the exec would never finish, and the engine would hang on the container."""
        self._thread.start()
        self._started.wait(START_TIMEOUT_S)
        return self

    @property
    def alive(self) -> bool:
        """Still following the container's process (it ends with the container's main process)."""
        return self._thread.is_alive()

    def _follow(self) -> None:
        api = self._client.api
        try:
            # Postfix puts a finished message into new/ with link(2), a create; Exim and OpenSMTPD rename it
            # there, a moved_to. Waking only at the close_write in tmp/ let a look run before the link and
            # then sleep out its poll interval (205 ms instead of 5, in 1 of 10 runs: make bench).
            exec_id = api.exec_create(self._container_id, [*self._prefix, "inotifywait", "-q", "-m", "-r",
                                                           "-e", "close_write", "-e", "moved_to", "-e", "create",
                                                           "--format", "%w%f", MAIL_ROOT],
                                      stdout=True, stderr=False)["Id"]
            stream = api.exec_start(exec_id, stream=True)
            deadline = time.monotonic() + START_TIMEOUT_S
            while not api.exec_inspect(exec_id).get("Pid") and time.monotonic() < deadline:
                time.sleep(0.02)
        except DockerException:
            return  # no watch: waits fall back to their poll interval
        finally:
            self._started.set()
        self.running = True
        with contextlib.suppress(DockerException, OSError, ValueError):
            for _chunk in stream:
                self.changed.set()
        self.running = False  # the container is gone (the topology was removed)
