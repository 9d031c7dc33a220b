"""The one bounded wait for observations that have no event to await (mailboxes, queues, captures)."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_INTERVAL_S = 0.2


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
        time.sleep(min(interval, remaining))
