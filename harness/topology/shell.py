"""Commands in a container through one ``sh`` kept running there, not one engine exec each.

Every ``docker exec`` and every archive read costs the engine a runc exec or a re-exec of dockerd:
about 80 ms of CPU each on the reference machine (2 cores), and a scenario's waits make dozens of them
(queue listings, Maildir and capture reads). A ``ContainerShell`` starts ``sh`` in the container once
and sends it each command as a line; the command costs a fork in the container, and nothing else
does: its standard output goes straight back on the session's stream, ended by a trailer that names
the command's nonce (random, drawn after the output's source exists, so no output can end itself
early), its exit status and the size of its standard error, which waits in a file of the session's own
directory and is read back only when not empty. Binary output (a tar stream, a capture file) arrives
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

    def __init__(self, container: Callable[[], Container], *, prefix: Sequence[str] = ()) -> None:
        """``prefix``: what the session's shell (and an exec instead of it) runs under (``setpriv ...``)."""
        self._container = container
        self._prefix = list(prefix)
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
        result = self._container().exec_run([*self._prefix, *argv], stdout=True, stderr=True, demux=True)
        out, err = result.output if isinstance(result.output, tuple) else (result.output, None)
        return ShellResult(int(result.exit_code if result.exit_code is not None else -1), out or b"", err or b"")

    def close(self) -> None:
        with self._lock:
            self._close()

    # -- the session --------------------------------------------------------------------------------------
    def _through_session(self, argv: Sequence[str]) -> ShellResult:
        if self._sock is None:
            self._open()
        nonce = secrets.token_hex(16)
        err = f"{self._dir}/e"
        # No process besides the command's unless it wrote to its standard error (then one wc, one cat):
        # each process is about 0.7 ms of CPU, and a matrix runs thousands of commands. The next
        # command's redirection truncates the file, so nothing is removed.
        line = (f"( {shlex.join(argv)} ) 2>{err} </dev/null; r=$?; printf '\\n%s %s ' {nonce} \"$r\"; "
                f"if [ -s {err} ]; then wc -c <{err}; cat {err}; else echo 0; fi\n")
        self._send(line.encode())
        out = self._until(f"\n{nonce} ".encode())
        trailer = self._until(b"\n").split()
        if len(trailer) != 2 or not trailer[0].lstrip(b"-").isdigit() or not trailer[1].isdigit():
            raise _SessionEnded(f"a reply that is not this command's: {trailer[:2]!r}")
        return ShellResult(int(trailer[0]), out, self._exactly(int(trailer[1])))

    def _open(self) -> None:
        container = self._container()
        api = container.client.api
        try:
            exec_id = api.exec_create(container.id, [*self._prefix, "sh"], stdin=True, stdout=True, stderr=False,
                                      tty=False)["Id"]
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

    def _until(self, marker: bytes) -> bytes:
        """Everything before ``marker``, which is consumed too."""
        searched = 0
        while (end := self._buffer.find(marker, searched)) < 0:
            searched = max(0, len(self._buffer) - len(marker) + 1)
            self._fill()
        data = bytes(self._buffer[:end])
        del self._buffer[:end + len(marker)]
        return data

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
