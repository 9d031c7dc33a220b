"""SMTP-aware readiness: a host is ready when a complete greeting line has been read, never after a
fixed sleep. Every wait is bounded and says what it waited for when it gives up."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

from harness.errors import ReadinessTimeoutError


def read_greeting(address: str, port: int = 25, *, timeout_s: float = 2.0) -> tuple[int, str]:
    """Connect, read the whole greeting (all continuation lines) and return (code, last line)."""
    with socket.create_connection((address, port), timeout=timeout_s) as sock:
        buf = b""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = buf.split(b"\r\n")
            for line in lines[:-1]:
                if len(line) >= 3 and line[:3].isdigit() and line[3:4] in (b" ", b""):
                    # A 521 host closes at once; the greeting is what we came for.
                    with contextlib.suppress(OSError):
                        sock.sendall(b"QUIT\r\n")
                    return int(line[:3]), line.decode("utf-8", "replace")
            if time.monotonic() > deadline:
                raise TimeoutError("no complete greeting line")
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionResetError(f"closed after {buf!r}")
            buf += chunk


def wait_for_greeting(address: str, expected_code: int, *, what: str, timeout_s: float = 30.0,
                      port: int = 25, logs: Callable[[], str] | None = None) -> float:
    """Poll until a greeting with ``expected_code`` is read; return the seconds it took."""
    started = time.monotonic()
    last = "nothing yet"
    while time.monotonic() - started < timeout_s:
        try:
            code, line = read_greeting(address, port, timeout_s=min(5.0, timeout_s))
        except (OSError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
            continue
        if code == expected_code:
            return time.monotonic() - started
        last = f"greeting {line!r}"
        time.sleep(0.1)
    tail = ""
    if logs is not None:
        tail = "\n--- last log lines ---\n" + logs()
    raise ReadinessTimeoutError(
        f"{what} at {address}:{port} did not greet with {expected_code} within {timeout_s:.0f} s "
        f"(last: {last}){tail}"
    )
