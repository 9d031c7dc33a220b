"""SMTP-aware readiness: a host is ready when a complete greeting line has been read, never after a
fixed sleep. Every wait is bounded and says what it waited for when it gives up, and a container that
exits while it is waited for is reported at once (exit code, how long it ran, its last log lines)
instead of after the whole bound."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from docker.errors import DockerException, NotFound
from docker.models.containers import Container

from harness.errors import ContainerExitedError, ReadinessTimeoutError
from harness.observe.polling import CANCELLED

# How often a wait looks at the container's state (one inspect call, ~5-10 ms): often enough that an
# exit is reported within a fraction of a second, rarely enough to cost nothing next to the MTA's start.
STATE_EVERY_S = 0.2
# Docker's State.Status values of a container that will never greet ("removed": gone from the engine).
ENDED = ("exited", "dead", "removed")


@dataclass(frozen=True)
class ContainerState:
    status: str  # Docker's State.Status: created, running, restarting, exited, dead; or "removed"
    exit_code: int | None = None
    ran_s: float | None = None  # FinishedAt - StartedAt, once it has finished
    oom_killed: bool = False
    error: str = ""  # the engine's State.Error (e.g. an entrypoint it could not exec)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def describe(self, ran_s: float | None = None) -> str:
        """What happened to it, for people: "exited with code 137 after 2.3 s (killed: out of memory)";
        ``ran_s`` when the engine gave no run time."""
        if self.status == "removed":
            return "was removed"
        if self.status == "paused":
            return "is paused"
        ran = self.ran_s if self.ran_s is not None else ran_s
        how = f"{self.status} with code {self.exit_code}" + (f" after {ran:.1f} s" if ran is not None else "")
        if self.oom_killed:
            how += " (killed: out of memory)"
        if self.error:
            how += f" ({self.error})"
        return how


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _timestamp(text: str) -> float | None:
    """Docker's RFC 3339 times carry nanoseconds (which datetime does not parse); None for the zero time."""
    m = _STAMP.match(text or "")
    if m is None or m.group(1).startswith("0001-"):
        return None
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + zone).timestamp() + float(f"0.{m.group(2) or '0'}")


def container_state(container: Container) -> ContainerState | None:
    """The container's state, from one low-level inspect call; None when the engine could not say (a
    wait then simply goes on)."""
    try:
        attrs = container.client.api.inspect_container(container.id)
    except NotFound:
        return ContainerState("removed")
    except DockerException:
        return None
    state = attrs.get("State") or {}
    started, finished = _timestamp(state.get("StartedAt", "")), _timestamp(state.get("FinishedAt", ""))
    ran = finished - started if started is not None and finished is not None and finished >= started else None
    code = state.get("ExitCode")
    return ContainerState(str(state.get("Status", "")), code if isinstance(code, int) else None, ran,
                          bool(state.get("OOMKilled")), str(state.get("Error") or ""))


class _ExitWatch:
    """Raises ContainerExitedError once the container has ended; looks at most every STATE_EVERY_S."""

    def __init__(self, container: Container | None, what: str, awaited: str,
                 logs: Callable[[], str] | None) -> None:
        self._container = container
        self._what = what
        self._awaited = awaited
        self._logs = logs
        self._started = time.monotonic()
        self._last = float("-inf")

    def check(self, *, force: bool = False) -> None:
        if CANCELLED.is_set():
            # Ctrl-C while topologies start side by side: every start ends now, not at its bound.
            raise KeyboardInterrupt("the run was interrupted")
        if self._container is None:
            return
        now = time.monotonic()
        if not force and now - self._last < STATE_EVERY_S:
            return
        self._last = now
        state = container_state(self._container)
        if state is None or not state.ended:
            return
        how = state.describe(now - self._started)
        tail, log = "", ""
        if self._logs is not None and state.status != "removed":
            log = self._logs().rstrip()
            tail = "\n--- last log lines ---\n" + (log or "(the container logged nothing)")
        code = None if state.oom_killed or state.status == "removed" else state.exit_code
        raise ContainerExitedError(f"{self._what} {how}, before {self._awaited}{tail}",
                                   exit_code=code, log=log)


def _wait_ready(sock: socket.socket, *, write: bool, deadline: float, tick: Callable[[], None] | None,
                tick_s: float, what: str) -> None:
    """Block until ``sock`` is writable (connected) or readable, calling ``tick`` every ``tick_s``."""
    poller = select.poll()  # not select(): no limit on descriptor numbers in a busy process
    poller.register(sock, select.POLLOUT if write else select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(what)
        if poller.poll(max(1, int(min(tick_s, remaining) * 1000))):
            return  # ready, or an error/hang-up the next call on the socket reports
        if tick is not None:
            tick()


def read_greeting(address: str, port: int = 25, *, timeout_s: float = 2.0,
                  tick: Callable[[], None] | None = None, tick_s: float = STATE_EVERY_S) -> tuple[int, str]:
    """Connect, read the whole greeting (all continuation lines) and return (code, last line).
    ``tick`` is called every ``tick_s`` while the connection or the greeting is awaited (it may raise
    to end the wait); ``timeout_s`` bounds the whole exchange."""
    deadline = time.monotonic() + timeout_s
    family, kind, proto, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setblocking(False)
        err = sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            raise OSError(err, os.strerror(err))
        _wait_ready(sock, write=True, deadline=deadline, tick=tick, tick_s=tick_s, what="connect timed out")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        buf = b""
        while True:
            lines = buf.split(b"\r\n")
            for line in lines[:-1]:
                if len(line) >= 3 and line[:3].isdigit() and line[3:4] in (b" ", b""):
                    # A 521 host closes at once; the greeting is what we came for.
                    with contextlib.suppress(OSError):
                        sock.send(b"QUIT\r\n")
                    return int(line[:3]), line.decode("utf-8", "replace")
            _wait_ready(sock, write=False, deadline=deadline, tick=tick, tick_s=tick_s,
                        what="no complete greeting line")
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionResetError(f"closed after {buf!r}")
            buf += chunk


def _wait_until_ready(attempt: Callable[[float, _ExitWatch], str | None], watch: _ExitWatch, *, timeout_s: float,
                      logs: Callable[[], str] | None, failed: str) -> float:
    """Call ``attempt`` (the time left, the watch to tick) until it finds nothing wrong (None); the seconds
    it took. A refused or timed-out attempt is tried again; past ``timeout_s``: ReadinessTimeoutError
    saying ``failed`` and what the last attempt met, with ``logs()``."""
    started = time.monotonic()
    last = "nothing yet"
    while (remaining := timeout_s - (time.monotonic() - started)) > 0:
        watch.check()
        try:
            problem = attempt(remaining, watch)
        except (OSError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
            continue
        if problem is None:
            return time.monotonic() - started
        last = problem
        time.sleep(0.1)
    watch.check(force=True)  # ended at the last moment: say so rather than "did not greet"
    tail = "\n--- last log lines ---\n" + logs() if logs is not None else ""
    raise ReadinessTimeoutError(f"{failed} within {timeout_s:.0f} s (last: {last}){tail}")


def wait_for_greeting(address: str, expected_code: int, *, what: str, timeout_s: float = 30.0,
                      port: int = 25, logs: Callable[[], str] | None = None,
                      container: Container | None = None) -> float:
    """Poll until a greeting with ``expected_code`` is read; return the seconds it took. With
    ``container``, its state is looked at every STATE_EVERY_S: once it has exited (or died, or was
    removed), ContainerExitedError says so at once, with ``logs()`` (its last lines)."""
    def attempt(remaining: float, watch: _ExitWatch) -> str | None:
        code, line = read_greeting(address, port, timeout_s=min(5.0, remaining), tick=watch.check)
        return None if code == expected_code else f"greeting {line!r}"

    return _wait_until_ready(attempt, _ExitWatch(container, what, f"greeting with {expected_code}", logs),
                             timeout_s=timeout_s, logs=logs,
                             failed=f"{what} at {address}:{port} did not greet with {expected_code}")


def wait_for_listener(address: str, port: int, *, what: str, timeout_s: float = 30.0,
                      logs: Callable[[], str] | None = None, container: Container | None = None) -> float:
    """Poll until a TCP connection to ``address``:``port`` is accepted (a service that does not speak
    first, such as HTTPS); return the seconds it took. ``container`` is watched as in wait_for_greeting."""
    def attempt(remaining: float, watch: _ExitWatch) -> str | None:
        with socket.create_connection((address, port), timeout=min(1.0, remaining)):
            return None

    return _wait_until_ready(attempt, _ExitWatch(container, what, "accepting connections", logs),
                             timeout_s=timeout_s, logs=logs,
                             failed=f"{what} at {address}:{port} accepted no connection")
