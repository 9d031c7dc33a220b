"""The one bounded wait for observations that have no event to await (mailboxes, queues, captures)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLL_INTERVAL_S = 0.2
# Set when the run is interrupted: every wait of every topology ends at once (KeyboardInterrupt), so
# the threads running topologies side by side stop and their containers are removed now.
CANCELLED = threading.Event()


def poll_until(within_s: float, probe: Callable[[], bool], *, interval: float = POLL_INTERVAL_S,
               wake: threading.Event | None = None) -> bool:
    """Call ``probe`` until it is true or ``within_s`` has passed; it always runs once more at the
    bound, so a check that must hold for the whole bound ("no delivery") sees its last state.
    ``wake``, set by an event source (a file written in a Maildir), ends the wait between probes early."""
    deadline = time.monotonic() + within_s
    while True:
        if wake is not None:
            wake.clear()  # what happens from here on is seen by this probe or wakes the next one
        if probe():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if wake is not None:
            wake.wait(min(interval, remaining))
        if CANCELLED.wait(0 if wake is not None else min(interval, remaining)):
            raise KeyboardInterrupt("the run was interrupted")
