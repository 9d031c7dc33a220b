"""Capture companions: tcpdump in an MTA container's network namespace, for the hops between MTAs.

Each companion runs the ``compose/capture`` image with ``network_mode="container:<mta id>"``: it sees
exactly the MTA's interfaces and addresses without the MTA's image, configuration or address being
touched. It records every TCP port-25 packet of that namespace into ``/capture/smtp.pcap`` from
start until it is removed; ``read_pcap()`` copies the file out at any time (tcpdump writes each
packet as it arrives) and ``harness.observe.smtpstream`` decodes it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from docker.errors import DockerException, NotFound
from testcontainers.core.container import DockerContainer

from harness.errors import InfrastructureError, ReadinessTimeoutError
from harness.observe.polling import CANCELLED
from harness.topology.engine import ENGINE_CLIENT
from harness.topology.labels import ROLE_LABEL, RUN_LABEL
from harness.topology.shell import ContainerShell
from harness.topology.topology import Host, confinement, limits, remove_container, tar_files

__all__ = ["CAPTURE_CAPS", "CAPTURE_FILE", "CAPTURE_IMAGE", "CaptureError", "HopCapture", "start_captures"]

CAPTURE_IMAGE = "capture"  # ImageStore.image(CAPTURE_IMAGE): built from compose/capture/
CAPTURE_FILE = "/capture/smtp.pcap"
# What tcpdump needs, nothing more: NET_RAW for the packet socket; CHOWN, SETUID and SETGID because
# Debian's tcpdump hands the file to user "tcpdump" and switches to it before capturing (it then runs
# with no capability at all). "-i any" never turns on promiscuous mode, and sharing another
# container's network namespace needs no capability of its own. NET_ADMIN is for the neighbour (ARP)
# table alone (compose/capture/neighbour-table: its probe interval, set before tcpdump starts, and its
# entries, emptied by the harness between two scenarios); an MTA container never gets it, and tcpdump,
# once it has switched to its user, has none of these.
CAPTURE_CAPS = ("NET_RAW", "NET_ADMIN", "CHOWN", "SETUID", "SETGID")
# tcpdump prints this on stderr once the socket is open and the filter installed.
LISTENING = "listening on"
# ... and this among its statistics, on SIGUSR1 and when it ends: packets its ring had no room for.
DROPPED = re.compile(r"(\d+) packets? dropped by kernel")
STATISTICS_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 20.0
TSHARK_TIMEOUT_S = 60.0


class CaptureError(InfrastructureError):
    """A capture companion could not be started or read."""


class HopCapture:
    """The capture companion of one MTA container."""

    def __init__(self, host: Host, image: str, labels: Mapping[str, str]) -> None:
        self.host = host
        self.image = image
        self.role = f"{host.role}-capture"
        run_id = labels.get(RUN_LABEL, "norun")
        self.container = (
            DockerContainer(image, name=f"mailflow-{run_id}-{self.role}", docker_client_kw=ENGINE_CLIENT)
            .with_kwargs(
                # The run's labels (cleanup by label removes the companion with the MTAs) + its own role.
                labels={**labels, ROLE_LABEL: self.role},
                network_mode=f"container:{host.container_id}",
                # testcontainers would otherwise attach a "host network" it guesses when the harness
                # itself runs in a container; a container sharing a namespace can join no network.
                network=None,
                # The bounds of every container; tshark, run in it to read the file back, peaks at 85 MB.
                **limits(),
                **confinement(CAPTURE_CAPS),
            )
        )
        self.listening_after_s: float | None = None
        # Reads of the capture file through a shell kept running in the companion (a fork, not an archive call).
        self.shell = ContainerShell(lambda: self.container.get_wrapped_container())
        # What was captured before the MTA's container restarted (tcpdump starts a new file then): one
        # entry per restart, empty when the old file could not be read any more.
        self.earlier: list[bytes] = []

    @property
    def container_id(self) -> str:
        return str(self.container.get_wrapped_container().id)

    def logs(self) -> str:
        try:
            raw = self.container.get_wrapped_container().logs(stdout=True, stderr=True, tail=50)
            return bytes(raw).decode("utf-8", "replace")
        except DockerException as exc:
            return f"(logs unavailable: {exc})"

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Start the companion and wait until tcpdump listens; return the seconds that took.

        Readiness is tcpdump's own "listening on ..." line in the container log, never a sleep: packets
        before that line are not captured, so nothing may be sent to the MTA until this returns.
        """
        started = time.monotonic()
        try:
            self.container.start()
        except DockerException as exc:
            raise CaptureError(f"could not start the capture companion of {self.host.role}: {exc}") from exc
        self.listening_after_s = self._wait_listening(started, timeout_s, heard=0)
        return self.listening_after_s

    def _log(self) -> str:
        try:
            return bytes(self.container.get_wrapped_container().logs(stdout=True, stderr=True)).decode(
                "utf-8", "replace")
        except DockerException as exc:
            raise CaptureError(f"capture companion of {self.host.role}: {exc}") from exc

    def _wait_listening(self, started: float, timeout_s: float, *, heard: int) -> float:
        """Wait until tcpdump's log has more than ``heard`` "listening on" lines (a restart keeps the
        earlier ones); the seconds since ``started``."""
        wrapped = self.container.get_wrapped_container()
        while True:
            log = self._log()
            if log.count(LISTENING) > heard:
                return time.monotonic() - started
            try:
                wrapped.reload()
                status = wrapped.status
            except DockerException as exc:
                raise CaptureError(f"capture companion of {self.host.role}: {exc}") from exc
            if status in ("exited", "dead"):
                code = wrapped.attrs.get("State", {}).get("ExitCode")
                raise CaptureError(
                    f"the capture companion of {self.host.role} exited (status {code}) before tcpdump listened "
                    f"(it needs the capabilities {', '.join(CAPTURE_CAPS)}):\n{log.strip()}")
            if time.monotonic() - started > timeout_s:
                raise ReadinessTimeoutError(
                    f"the capture companion of {self.host.role} ({self.host.address}) did not print "
                    f"{LISTENING!r} within {timeout_s:.0f} s\n--- its log ---\n{log.strip()}")
            if CANCELLED.wait(0.02):
                raise KeyboardInterrupt("the run was interrupted")

    def resume(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Follow the MTA into the new network namespace its container got from a start or restart:
        keep what was captured so far, start tcpdump again and wait until it listens."""
        try:
            kept = self.read_pcap()
        except CaptureError:  # nothing captured yet, or the file is gone: nothing more of it to keep
            kept = b""
        # One entry per restart, even an empty one: a reader that had read the old file up to some point
        # keeps what it read and starts the new file from its beginning (hops._ParsedCaptures).
        self.earlier.append(kept)
        heard = self._log().count(LISTENING)
        started = time.monotonic()
        try:
            self.container.get_wrapped_container().restart(timeout=1)
        except DockerException as exc:
            raise CaptureError(f"could not restart the capture companion of {self.host.role}: {exc}") from exc
        self._wait_listening(started, timeout_s, heard=heard)

    def forget_neighbours(self) -> None:
        """Empty the neighbour (ARP) cache of the MTA's network namespace, as a fresh topology's is: a
        neighbour an earlier scenario spoke to and that is now stopped or off the network must fail
        at once ("no route to host"), not go unanswered until the stale entry times out. The probe
        interval is set again too (an interface the role got back when reconnected has the defaults)."""
        self._neighbour_table("reset")

    def tune_neighbours(self) -> None:
        """The probe interval of capture-start on every interface of the MTA's namespace (after the
        role was reconnected to the network: its new interface starts with the kernel's defaults)."""
        self._neighbour_table("tune")

    def _neighbour_table(self, command: str) -> None:
        self._succeeded(["neighbour-table", command])  # compose/capture/neighbour-table

    def _succeeded(self, argv: list[str]) -> None:
        """Run ``argv`` in the companion; CaptureError, with its output, unless it exits 0."""
        try:
            done = self.shell.run(argv)
        except DockerException as exc:
            raise CaptureError(f"`{' '.join(argv)}` for {self.host.role} failed: {exc}") from exc
        if done.exit_code != 0:
            raise CaptureError(f"`{' '.join(argv)}` in the capture companion of {self.host.role} exited "
                               f"{done.exit_code}: " + (done.stdout + done.stderr).decode("utf-8", "replace").strip())

    def tcp_activity(self) -> tuple[int, ...]:
        """The TCP counters of the MTA's network namespace (/proc/net/snmp, read from the companion,
        which shares it): connections opened either way, attempted ones included, and segments in and
        out, on every port. Unchanged between two readings: no TCP to or from the MTA in between."""
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

    def dropped(self) -> int:
        """The most packets tcpdump has said the kernel dropped (its ring full), now or in an earlier run
        of it in this companion: 0 means every packet that crossed the namespace's interfaces is in the
        capture. Asks tcpdump for its statistics (SIGUSR1, sent as its own user, whom it switched to)."""
        heard = len(DROPPED.findall(self._log()))
        self._succeeded(["setpriv", "--reuid=tcpdump", "--regid=tcpdump", "--clear-groups", "sh", "-c", "kill -USR1 1"])
        deadline = time.monotonic() + STATISTICS_TIMEOUT_S
        while True:
            counts = DROPPED.findall(self._log())
            if len(counts) > heard:
                return max(int(c) for c in counts)
            if time.monotonic() > deadline:
                raise CaptureError(f"the capture of {self.host.role} printed no statistics within "
                                   f"{STATISTICS_TIMEOUT_S:.0f} s")
            if CANCELLED.wait(0.02):
                raise KeyboardInterrupt("the run was interrupted")

    def read_pcaps(self) -> list[bytes]:
        """Every capture file of this companion: those kept from before a restart, then the current one."""
        return [*(kept for kept in self.earlier if kept), self.read_pcap()]

    def read_pcap_from(self, offset: int) -> bytes:
        """The current capture file's bytes from ``offset`` on: a shared topology's file keeps growing
        across its scenarios, and what was read before need not cross the engine again. (The current
        file only ever grows: a restart starts a new one after keeping the old in ``earlier``.)"""
        with contextlib.suppress(DockerException):
            done = self.shell.run(["tail", "-c", f"+{offset + 1}", CAPTURE_FILE])
            if done.exit_code == 0:
                return done.stdout
        return self.read_pcap()[offset:]

    def read_pcap(self) -> bytes:
        """The capture file as it is now (complete up to the last packet written; works while running
        and after the companion stopped)."""
        with contextlib.suppress(DockerException):  # a stopped companion: its file is still there to copy
            done = self.shell.run(["cat", CAPTURE_FILE])
            if done.exit_code == 0:
                return done.stdout
            raise CaptureError(f"no {CAPTURE_FILE} in the capture companion of {self.host.role}: "
                               + done.stderr.decode("utf-8", "replace").strip())
        try:
            stream, _ = self.container.get_wrapped_container().get_archive(CAPTURE_FILE)
            data = b"".join(stream)
        except NotFound as exc:
            raise CaptureError(f"no {CAPTURE_FILE} in the capture companion of {self.host.role}: {exc}") from exc
        except DockerException as exc:
            raise CaptureError(f"could not read the capture of {self.host.role}: {exc}") from exc
        for content in tar_files(data).values():
            return content
        raise CaptureError(f"the archive of {CAPTURE_FILE} from {self.host.role} holds no file")

    def tshark(self, *args: str) -> str:
        """Run ``tshark -r <capture file> <args>`` inside the companion and return its standard output.

        tshark reads the same file the harness decodes, so Wireshark's dissectors can check ours.
        """
        argv = ["timeout", str(int(TSHARK_TIMEOUT_S)), "tshark", "-r", CAPTURE_FILE, *args]
        try:
            done = self.shell.run(argv)
        except DockerException as exc:
            raise CaptureError(f"could not run tshark in the capture companion of {self.host.role}: {exc}") from exc
        exit_code, out = done.exit_code, done.stdout.decode("utf-8", "replace")
        if exit_code != 0:
            err = done.stderr.decode("utf-8", "replace").strip()
            raise CaptureError(f"tshark {' '.join(args)} exited with {exit_code}: {err}")
        return out

    def remove(self) -> None:
        """Remove the companion (the run's label cleanup would do it too); the capture file goes with it."""
        self.shell.close()
        with contextlib.suppress(DockerException):
            self.container.stop()

    def discard(self) -> None:
        """Remove the companion's container now, with what it captured: its MTA's container is about
        to be replaced (a companion cannot follow a container into another one's network namespace)."""
        self.shell.close()
        remove_container(self.container, f"the capture companion of {self.host.role}")


def start_captures(hosts: Iterable[Host], image: str, labels: Mapping[str, str], *,
                   timeout_s: float = READY_TIMEOUT_S) -> dict[str, HopCapture]:
    """A listening companion for each host, started in parallel; on any failure none is left running."""
    captures = {host.role: HopCapture(host, image, labels) for host in hosts}
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(captures))) as pool:
            list(pool.map(lambda c: c.start(timeout_s), captures.values()))
    except BaseException:
        for capture in captures.values():
            capture.remove()
        raise
    return captures
