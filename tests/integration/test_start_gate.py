"""A role that a fault step starts again gets a new network namespace and a new capture file, and the
harness must follow its capture there (HopCapture.resume). The role's MTA is held at the start gate
meanwhile, so no session with it can happen unseen, however late the harness follows
(on a busy machine, about a second; a relay retrying by itself may connect in that moment)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from datetime import UTC, datetime

import pytest

from harness.expect.results import PASSED
from harness.observe.smtpstream import merge_captures
from harness.runner import RunContext, ScenarioSequence
from harness.scenario.loader import load_scenario
from harness.topology.faults import do_fault
from harness.topology.topology import Host
from harness.verify import CAPTURE_LAG_S

from .conftest import SCENARIOS

# How late the harness follows the capture here: longer than Postfix takes to greet after its start.
LATE_S = 3.0


def _knock(address: str, stop: threading.Event, greeted: list[tuple[int, float, float]]) -> None:
    """Connect to port 25 again and again; note each greeting's local port and when it came."""
    while not stop.is_set():
        with contextlib.suppress(OSError), socket.create_connection((address, 25), timeout=0.3) as sock:
            sock.settimeout(5.0)
            if sock.recv(512).startswith(b"220"):
                greeted.append((sock.getsockname()[1], time.monotonic(), time.time()))
                sock.sendall(b"QUIT\r\n")
                sock.recv(512)
        time.sleep(0.02)


def _started_at(host: Host) -> float:
    """When the container's current process started (wall clock), from the engine."""
    container = host.container.get_wrapped_container()
    container.reload()
    stamp = container.attrs["State"]["StartedAt"]  # RFC 3339 with nanoseconds
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + float(f"0.{fraction or 0}")


@pytest.mark.parametrize(("mta", "action"), [("postfix", "start"), ("postfix", "restart"), ("exim", "restart"),
                                           ("opensmtpd", "restart")])
def test_a_role_started_again_greets_only_once_its_capture_listens(run_context: RunContext, mta: str,
                                                                   action: str) -> None:
    scenario = load_scenario(SCENARIOS / "01-direct-354.yaml")
    sequence = ScenarioSequence(run_context)
    try:
        first = sequence.run(scenario, mta)
        shared = sequence.shared
        assert shared is not None
        topology, capture = shared.topology, shared.captures["mx"]
        mx = topology.hosts["mx"]
        listening: list[float] = []

        def late_resume(host: Host) -> None:
            time.sleep(LATE_S)  # a busy machine: the harness follows late
            capture.resume()
            listening.append(time.monotonic())

        if action == "start":
            assert do_fault(topology, "mx", "stop") is None
        stop, greeted = threading.Event(), []
        knocking = threading.Thread(target=_knock, args=(mx.address, stop, greeted))
        knocking.start()
        try:
            error = do_fault(topology, "mx", action, resume_capture=late_resume)
            time.sleep(0.5)
        finally:
            stop.set()
            knocking.join()
        started = _started_at(mx)
        time.sleep(CAPTURE_LAG_S)
        connections = merge_captures(capture.read_pcaps())
    finally:
        sequence.close()
    assert first.status == PASSED, (first.error, first.failures)
    assert error is None, error
    # Greetings before the container started again came from the MTA that ran before (restart).
    again = [(port, at) for port, at, wall in greeted if wall > started]
    assert again and listening, "mx never greeted again"
    port, at = again[0]
    assert at > listening[0], f"mx greeted {listening[0] - at:.2f} s before its capture listened again"
    seen = [c for c in connections if c.src == topology.gateway and c.sport == port]
    assert seen and seen[0].server.data.startswith(b"220"), "the session after the start is not in mx's capture"
