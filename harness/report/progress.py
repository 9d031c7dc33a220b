"""Progress lines for long work: what is happening and the time elapsed, on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._quiet = quiet
        self._started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def line(self, message: str) -> None:
        if not self._quiet:
            print(f"[{self.elapsed():6.1f}s] {message}", file=self._stream, flush=True)

    @contextmanager
    def task(self, what: str) -> Iterator[None]:
        """Announce ``what``, then say how long it took (or that it failed)."""
        self.line(f"{what} ...")
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.line(f"{what}: failed after {time.monotonic() - started:.1f}s")
            raise
        self.line(f"{what}: done in {time.monotonic() - started:.1f}s")
