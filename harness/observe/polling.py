"""The one bounded wait for observations that have no event to await (mailboxes, queues, captures)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLL_INTERVAL_S = 0.2
# Set when the run is interrupted: every wait of every topology ends at once (KeyboardInterrupt), so
# the threads running topologies side by side stop and their containers are removed now.
CANCELLED = threading.Event()


def poll_until(within_s: float, probe: Callable[[], bool], *, interval: float = POLL_INTERVAL_S) -> bool:
    """Call ``probe`` until it is true or ``within_s`` has passed; it always runs once more at the
    bound, so a check that must hold for the whole bound ("no delivery") sees its last state."""
    deadline = time.monotonic() + within_s
    while True:
        if probe():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if CANCELLED.wait(min(interval, remaining)):
            raise KeyboardInterrupt("the run was interrupted")
