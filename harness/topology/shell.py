"""Commands in a container through one ``sh`` kept running there, not one engine exec each.

Every ``docker exec`` and every archive read costs the engine a runc exec or a re-exec of dockerd:
about 80 ms of CPU each on the reference machine (2 cores), and a scenario's waits make dozens of them
(queue listings, Maildir and capture reads). A ``ContainerShell`` starts ``sh`` in the container once
and sends it each command as a line; the command costs a fork in the container. Its standard output
and error go to files in a directory of the session's own, and come back framed by a header naming
the command's nonce, exit status and sizes, so binary output (a tar stream, a capture file) arrives
byte for byte and a reply is never taken for another command's.

Whatever goes wrong with the session (the container restarted and took the shell with it, the engine
is remote over a transport without a raw socket, a reply that does not parse) ends it, and that
command runs the way it always did, through ``exec_run``: the result is the same, only dearer. A
container that is paused (its shell frozen) or no longer running is noticed while waiting for the
reply, so such a command fails as promptly as an exec would.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from docker.errors import DockerException
from docker.models.containers import Container

from harness.topology.readiness import container_state

__all__ = ["ContainerShell", "ShellResult"]

# How long a reply may take before the container's state is looked at (paused, ended), and how long
# one may take at all before the session is given up for an exec.
LOOK_AFTER_S = 2.0
REPLY_TIMEOUT_S = 300.0
_STDOUT = 1


@dataclass(frozen=True)
class ShellResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class _SessionEnded(Exception):
    """The session cannot be used (any more): the command goes through an exec instead."""


class ContainerShell:
    """One ``sh`` session in a container, for commands whose cost should be a fork, not an exec."""

    def __init__(self, container: Callable[[], Container]) -> None:
        self._container = container
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._dir = ""
        self.sessions = 0  # how many were started (a new one after each container restart)
        self.fallbacks = 0  # commands that went through an exec instead

    def run(self, argv: Sequence[str]) -> ShellResult:
        """``argv`` in the container, as ``exec_run(argv, demux=True)`` would run it; raises what that
        raises (DockerException) when the container cannot run it."""
        with self._lock:
            try:
                return self._through_session(argv)
            except _SessionEnded:
                self._close()
        self.fallbacks += 1
        result = self._container().exec_run(list(argv), stdout=True, stderr=True, demux=True)
        out, err = result.output if isinstance(result.output, tuple) else (result.output, None)
        return ShellResult(int(result.exit_code if result.exit_code is not None else -1), out or b"", err or b"")

    def close(self) -> None:
        with self._lock:
            self._close()

    # -- the session --------------------------------------------------------------------------------------
    def _through_session(self, argv: Sequence[str]) -> ShellResult:
        if self._sock is None:
            self._open()
        nonce = secrets.token_hex(8)
        d = self._dir
        # Two processes besides the command's: one wc for both sizes ("N .../o", "M .../e", "T total"),
        # one cat; the next command's redirections truncate the files, so nothing is removed.
        line = (f"( {shlex.join(argv)} ) >{d}/o 2>{d}/e </dev/null; r=$?; set -- $(wc -c {d}/o {d}/e); "
                f"printf '%s %s %s %s\\n' {nonce} \"$r\" \"$1\" \"$3\"; cat {d}/o {d}/e\n")
        self._send(line.encode())
        header = self._line().split()
        if len(header) != 4 or header[0] != nonce.encode() or not all(f.isdigit() for f in header[2:]):
            raise _SessionEnded(f"a reply that is not this command's: {header[:4]!r}")
        code = int(header[1]) if header[1].lstrip(b"-").isdigit() else -1
        out_size, err_size = int(header[2]), int(header[3])
        body = self._exactly(out_size + err_size)
        return ShellResult(code, body[:out_size], body[out_size:])

    def _open(self) -> None:
        container = self._container()
        api = container.client.api
        try:
            exec_id = api.exec_create(container.id, ["sh"], stdin=True, stdout=True, stderr=False, tty=False)["Id"]
            raw = api.exec_start(exec_id, socket=True)
        except DockerException as exc:
            raise _SessionEnded(str(exc)) from exc
        sock = getattr(raw, "_sock", None)
        if not isinstance(sock, socket.socket):
            with contextlib.suppress(Exception):
                raw.close()
            raise _SessionEnded("no raw socket to the exec (a remote engine's transport)")
        self._sock, self._buffer = sock, bytearray()
        self.sessions += 1
        # Its own directory for the replies' files; errors of the session's shell itself are not ours.
        self._dir = "/tmp/mailflow-shell-" + secrets.token_hex(6)
        self._send(f"exec 2>/dev/null; mkdir -m 700 -p {self._dir}\n".encode())

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock, self._buffer = None, bytearray()

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise _SessionEnded(str(exc)) from exc

    def _line(self) -> bytes:
        while b"\n" not in self._buffer:
            self._fill()
        end = self._buffer.index(b"\n")
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _fill(self) -> None:
        """One frame of the exec's multiplexed stream; its standard output joins the buffer."""
        header = self._recv(8)
        stream, size = header[0], struct.unpack(">I", header[4:])[0]
        payload = self._recv(size)
        if stream == _STDOUT:
            self._buffer += payload

    def _recv(self, size: int) -> bytes:
        assert self._sock is not None
        data = bytearray()
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        self._sock.settimeout(LOOK_AFTER_S)
        while len(data) < size:
            try:
                chunk = self._sock.recv(size - len(data))
            except TimeoutError:
                if time.monotonic() > deadline or not self._running():
                    raise _SessionEnded("no reply") from None
                continue
            except OSError as exc:
                raise _SessionEnded(str(exc)) from exc
            if not chunk:
                raise _SessionEnded("the session ended (the container stopped or restarted)")
            data += chunk
        return bytes(data)

    def _running(self) -> bool:
        """Whether the shell can still answer: its container runs and is not paused."""
        state = container_state(self._container())
        return state is None or state.status == "running"  # None: the engine could not say, wait on
