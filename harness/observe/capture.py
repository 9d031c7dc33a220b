"""Hop captures: tcpdump in each MTA role's own container, for the hops between MTAs.

The role's entrypoint (harness.topology.topology.mta_entrypoint) starts tcpdump before the MTA and
waits until it listens, so nothing reaches or leaves the role uncaptured; the MTA then runs without the
capture's capabilities. tcpdump records every TCP port-25 packet and every ARP message of the
container's network namespace into ``CAPTURE_FILE`` from then until the container stops, writing each
packet as it arrives: ``read_pcap()`` reads the file at any time through the container's shell (an
archive call once the container stopped), and ``harness.observe.smtpstream`` decodes it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable

from docker.errors import DockerException, NotFound

from harness.errors import InfrastructureError, ReadinessTimeoutError
from harness.observe.polling import CANCELLED
from harness.topology.readiness import container_state
from harness.topology.shell import ContainerShell
from harness.topology.topology import (
    CAPTURE_CAPS,
    CAPTURE_FILE,
    CAPTURE_LOG,
    CAPTURE_PID,
    PREVIOUS,
    TUNE_NEIGHBOURS,
    Host,
    tar_files,
)

__all__ = ["CAPTURE_CAPS", "CAPTURE_FILE", "CAPTURE_IMAGE", "CaptureError", "HopCapture", "start_captures"]

# The image with tshark, Wireshark's reader, built from compose/capture/: only to check our decoder
# against Wireshark's dissector on the same capture file (tests), never during a run.
CAPTURE_IMAGE = "capture"
# tcpdump prints this on stderr once the socket is open and the filter installed.
LISTENING = "listening on"
# ... and this among its statistics, on SIGUSR1 and when it ends: packets its ring had no room for.
DROPPED = re.compile(r"(\d+) packets? dropped by kernel")
STATISTICS_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 20.0


class CaptureError(InfrastructureError):
    """A role's hop capture did not listen, or could not be read."""


class HopCapture:
    """The hop capture of one MTA role, running in the role's container."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.listening_after_s: float | None = None
        # What was captured before the role's container started again (its entrypoint starts a new file
        # then): one entry per start, empty when the old file could not be read.
        self.earlier: list[bytes] = []
        # The most packets a tcpdump of this role that has ended since (with its container's processes)
        # said it had lost, asked just before the end (``settle``): it cannot be asked afterwards.
        self.dropped_before = 0

    @property
    def shell(self) -> ContainerShell:
        return self.host.shell

    def logs(self) -> str:
        """tcpdump's own output (its "listening on" line, its statistics, its errors)."""
        try:
            return self._log()
        except CaptureError as exc:
            return f"(tcpdump's log unavailable: {exc})"

    def _log(self) -> str:
        try:
            done = self.shell.run(["cat", CAPTURE_LOG])
        except DockerException as exc:
            raise CaptureError(f"the capture of {self.host.role}: {exc}") from exc
        if done.exit_code != 0:
            raise CaptureError(f"no {CAPTURE_LOG} in {self.host.role}'s container: "
                               + done.stderr.decode("utf-8", "replace").strip())
        return done.stdout.decode("utf-8", "replace")

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Wait until tcpdump listens in the role's container; return the seconds that took. The
        entrypoint starts the MTA only then, so for a role that greets this returns at the first look."""
        started = time.monotonic()
        self.listening_after_s = self._wait_listening(started, timeout_s)
        return self.listening_after_s

    def _wait_listening(self, started: float, timeout_s: float) -> float:
        while True:
            with contextlib.suppress(CaptureError):
                if LISTENING in self._log():
                    return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise ReadinessTimeoutError(
                    f"the capture of {self.host.role} ({self.host.address}) did not print {LISTENING!r} within "
                    f"{timeout_s:.0f} s (it needs the capabilities {', '.join(CAPTURE_CAPS)})\n--- tcpdump ---\n"
                    f"{self.logs().strip()}\n--- the container's log ---\n{self.host.logs(tail=20).strip()}")
            if CANCELLED.wait(0.02):
                raise KeyboardInterrupt("the run was interrupted")

    def resume(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """The role's container started again (a new network namespace, a new tcpdump writing a new
        file): keep what the last one captured and wait until the new one listens."""
        try:
            kept = self._read(CAPTURE_FILE + PREVIOUS)
        except CaptureError:  # nothing captured before, or the file is gone: nothing more of it to keep
            kept = b""
        # One entry per start, even an empty one: a reader that had read the old file up to some point
        # keeps what it read and starts the new file from its beginning (hops._ParsedCaptures).
        self.earlier.append(kept)
        self._wait_listening(time.monotonic(), timeout_s)

    def forget_neighbours(self) -> None:
        """Empty the neighbour (ARP) cache of the role's network namespace, as a fresh topology's is: a
        neighbour an earlier scenario spoke to and that is now stopped or off the network must fail
        at once ("no route to host"), not go unanswered until the stale entry times out. The probe
        interval is set again too (an interface the role got back when reconnected has the defaults)."""
        self._succeeded(self.host.admin_shell, ["sh", "-ec", f"{TUNE_NEIGHBOURS}; ip neigh flush all"])

    def tune_neighbours(self) -> None:
        """The entrypoint's probe interval on every interface of the role's namespace (after the role was
        reconnected to the network: its new interface starts with the kernel's defaults)."""
        self._succeeded(self.host.admin_shell, ["sh", "-ec", TUNE_NEIGHBOURS])

    def _succeeded(self, shell: ContainerShell, argv: list[str]) -> None:
        """Run ``argv`` (the harness's own, fixed) through ``shell`` in the role's container (the admin
        shell: with NET_ADMIN); CaptureError, with its output, unless it exits 0."""
        try:
            done = shell.run(argv)
        except DockerException as exc:
            raise CaptureError(f"`{' '.join(argv)}` in {self.host.role}'s container failed: {exc}") from exc
        if done.exit_code != 0:
            raise CaptureError(f"`{' '.join(argv)}` in {self.host.role}'s container exited {done.exit_code}: "
                               + (done.stdout + done.stderr).decode("utf-8", "replace").strip())

    def tcp_activity(self) -> tuple[int, ...]:
        """The TCP counters of the role's network namespace (/proc/net/snmp): connections opened either
        way, attempted ones included, and segments in and out, on every port. Unchanged between two
        readings: no TCP to or from the role in between."""
        try:
            done = self.shell.run(["cat", "/proc/net/snmp"])
        except DockerException as exc:
            raise CaptureError(f"could not read the TCP counters of {self.host.role}: {exc}") from exc
        rows = [line.split() for line in done.stdout.decode("ascii", "replace").splitlines()
                if line.startswith("Tcp:")]
        if done.exit_code != 0 or len(rows) != 2:
            raise CaptureError(f"no TCP counters for {self.host.role}: "
                               + (done.stdout + done.stderr).decode("utf-8", "replace").strip()[:200])
        counters = dict(zip(rows[0][1:], rows[1][1:], strict=False))
        try:
            return tuple(int(counters[k]) for k in ("ActiveOpens", "PassiveOpens", "InSegs", "OutSegs"))
        except (KeyError, ValueError) as exc:
            raise CaptureError(f"unexpected TCP counters for {self.host.role}: {rows}") from exc

    def settle(self) -> None:
        """Remember what tcpdump says it lost so far: the role's container is about to be stopped, killed
        or restarted, and its tcpdump ends with it, killed (it is not PID 1), its last words unsaid."""
        with contextlib.suppress(CaptureError):
            self.dropped_before = self.dropped()

    def dropped(self) -> int:
        """The most packets this role's tcpdump has said the kernel dropped (its ring full), now or before
        its container last stopped: 0 means every packet that crossed the namespace's interfaces is in
        the capture. Asks the running tcpdump for its statistics (SIGUSR1, sent as its own user, whom it
        switched to); a container that does not run has no tcpdump to ask, and captured nothing since."""
        state = container_state(self.host.container.get_wrapped_container())
        if state is not None and state.status != "running":
            return self.dropped_before
        heard = len(DROPPED.findall(self._log()))
        self._succeeded(self.shell, ["setpriv", "--reuid=tcpdump", "--regid=tcpdump", "--clear-groups", "sh", "-c",
                                     f'kill -USR1 "$(cat {CAPTURE_PID})"'])
        deadline = time.monotonic() + STATISTICS_TIMEOUT_S
        while True:
            counts = DROPPED.findall(self._log())
            if len(counts) > heard:
                return max(self.dropped_before, *(int(c) for c in counts))
            if time.monotonic() > deadline:
                raise CaptureError(f"the capture of {self.host.role} printed no statistics within "
                                   f"{STATISTICS_TIMEOUT_S:.0f} s")
            if CANCELLED.wait(0.02):
                raise KeyboardInterrupt("the run was interrupted")

    def read_pcaps(self) -> list[bytes]:
        """Every capture file of this role: those kept from before a restart, then the current one."""
        return [*(kept for kept in self.earlier if kept), self.read_pcap()]

    def read_pcap_from(self, offset: int) -> bytes:
        """The current capture file's bytes from ``offset`` on: a shared topology's file keeps growing
        across its scenarios, and what was read before need not cross the engine again. (The current
        file only ever grows: a new start begins a new one, after ``resume`` kept the old in ``earlier``.)"""
        with contextlib.suppress(DockerException):
            done = self.shell.run(["tail", "-c", f"+{offset + 1}", CAPTURE_FILE])
            if done.exit_code == 0:
                return done.stdout
        return self.read_pcap()[offset:]

    def read_pcap(self) -> bytes:
        """The capture file as it is now (complete up to the last packet written; works while the
        container runs and after it stopped)."""
        return self._read(CAPTURE_FILE)

    def _read(self, path: str) -> bytes:
        with contextlib.suppress(DockerException):  # a stopped container: its file is still there to copy
            done = self.shell.run(["cat", path])
            if done.exit_code == 0:
                return done.stdout
            raise CaptureError(f"no {path} in {self.host.role}'s container: "
                               + done.stderr.decode("utf-8", "replace").strip())
        try:
            stream, _ = self.host.container.get_wrapped_container().get_archive(path)
            data = b"".join(stream)
        except NotFound as exc:
            raise CaptureError(f"no {path} in {self.host.role}'s container: {exc}") from exc
        except DockerException as exc:
            raise CaptureError(f"could not read the capture of {self.host.role}: {exc}") from exc
        for content in tar_files(data).values():
            return content
        raise CaptureError(f"the archive of {path} from {self.host.role} holds no file")


def start_captures(hosts: Iterable[Host], *, timeout_s: float = READY_TIMEOUT_S) -> dict[str, HopCapture]:
    """The listening capture of each host (started by its entrypoint before its MTA)."""
    captures = {host.role: HopCapture(host) for host in hosts}
    for capture in captures.values():
        capture.start(timeout_s)
    return captures
