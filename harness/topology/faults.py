"""Faults done to a role's container mid-scenario: stop, start, restart, kill, pause, unpause,
disconnect and reconnect, through the Docker API. A role brought back (start, restart, unpause,
reconnect) is back once it greets with its ready code again (an MTA) or answers (dns).

``disconnect`` takes the container off the run's network: connections to its address then time out
(no host answers), like a host that is down; ``stop`` keeps the address's neighbours but nothing
listens. A started or restarted container has a new network namespace and its entrypoint a new
capture file (the last one kept aside, ``HopCapture.resume`` keeps its contents), while the role's MTA
waits at its start gate (``START_GATE``): no session with the role happens before the harness follows
its capture into the new file. The engine
also wrote a resolv.conf anew, so what the role's start set up in it is set up again (``redo_setup``),
before the MTA starts.

``restore`` undoes whatever state fault steps left a role in (stopped, paused, off the network), so a
topology a fault scenario ran on can serve the next scenario."""

from __future__ import annotations

import time
from collections.abc import Callable

from docker.errors import DockerException
from docker.models.containers import Container

from harness.dns.preflight import wait_until_answering
from harness.dns.zones import HARNESS_ZONE
from harness.errors import HarnessError
from harness.topology.readiness import wait_for_greeting
from harness.topology.topology import Host, Topology, close_start_gate, open_start_gate, redo_setup

__all__ = ["ACTIONS", "BRINGS_BACK", "NEW_NAMESPACE", "do_fault", "restore"]

ACTIONS = ("stop", "start", "restart", "kill", "pause", "unpause", "disconnect", "reconnect")
# After these the role must be usable again before the scenario goes on.
BRINGS_BACK = frozenset({"start", "restart", "unpause", "reconnect"})
# After these the container runs in a new network namespace, its capture in a new file: the harness follows it.
NEW_NAMESPACE = frozenset({"start", "restart"})
# These end every process of the container, its capture's tcpdump among them.
ENDS_PROCESSES = frozenset({"stop", "kill", "restart"})
STOP_TIMEOUT_S = 10  # what an MTA gets to end cleanly on SIGTERM before SIGKILL (docker stop -t)
BACK_TIMEOUT_S = 30.0
EXEC_SETTLE_S = 2.0


def do_fault(topology: Topology, role: str, action: str,
             *, resume_capture: Callable[[Host], None] | None = None,
             rejoined: Callable[[Host], None] | None = None,
             ending: Callable[[Host], None] | None = None) -> str | None:
    """Do ``action`` to ``role``; None when it is in that state, else what went wrong. ``rejoined`` is
    told of a role reconnected to the network (its namespace has a new interface), ``ending`` of one
    whose processes are about to end (stop, kill, restart), before they do."""
    host = topology.hosts[role]
    if action in ENDS_PROCESSES and ending is not None:
        ending(host)
    error = _act(topology, host, action, resume_capture)
    if error is None and action == "reconnect" and rejoined is not None:
        try:
            rejoined(host)
        except HarnessError as exc:
            return f"{role} reconnected, but its neighbour table could not be tuned: {exc}"
    if error is None and action in BRINGS_BACK:
        return _back(host)
    return error


def restore(topology: Topology, role: str, *, resume_capture: Callable[[Host], None] | None = None) -> str | None:
    """``role`` running, unpaused, on the run's network and greeting (or answering) again, whatever fault
    steps did to it; None when it is (or never stopped being), else what went wrong."""
    host = topology.hosts[role]
    try:
        container = host.container.get_wrapped_container()
        container.reload()
        networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    except DockerException as exc:
        return f"could not inspect {role}'s container: {exc}"
    # Back on the network first: the start or unpause then waits for a greeting that can reach us.
    actions = [] if topology.network_name in networks else ["reconnect"]
    if container.status == "paused":
        actions.append("unpause")
    elif container.status != "running":
        actions.append("start")
    for action in actions:
        error = _act(topology, host, action, resume_capture)
        if error is not None:
            return error
    return _back(host) if actions else None


def _act(topology: Topology, host: Host, action: str, resume_capture: Callable[[Host], None] | None) -> str | None:
    if action not in NEW_NAMESPACE:
        return _docker_action(topology, host, action)
    # Its MTA waits at the start gate until the harness has followed the capture into its new file.
    gated = resume_capture is not None and host.start_gate
    if gated:
        try:
            close_start_gate(host)
        except HarnessError as exc:
            return f"{host.role} could not be held at its start gate: {exc}"
    error: str | None = None
    try:
        error = _docker_action(topology, host, action) or _follow(host, action, resume_capture)
    finally:
        if gated:
            try:
                open_start_gate(host)
            except HarnessError as exc:
                error = error or f"{host.role} {action}ed, but its start gate could not be opened: {exc}"
    return error


def _docker_action(topology: Topology, host: Host, action: str) -> str | None:
    try:
        container = host.container.get_wrapped_container()
        if action == "stop":
            container.stop(timeout=STOP_TIMEOUT_S)
        elif action == "kill":
            container.kill()
        elif action == "start":
            container.start()
        elif action == "restart":
            container.restart(timeout=STOP_TIMEOUT_S)
        elif action == "pause":
            _no_exec_starting(container)
            container.pause()
        elif action == "unpause":
            container.unpause()
        elif action == "disconnect":
            topology.client.networks.get(topology.network_name).disconnect(container)
        elif action == "reconnect":
            topology.client.networks.get(topology.network_name).connect(container, ipv4_address=host.address)
        else:
            raise AssertionError(f"the schema allows no fault action {action!r}")
    except DockerException as exc:
        return f"Docker refused to {action} {host.role}: {exc}"
    return None


def _follow(host: Host, action: str, resume_capture: Callable[[Host], None] | None) -> str | None:
    """What a container started in a new network namespace needs again: its set-up, its capture."""
    try:
        redo_setup(host)
    except HarnessError as exc:
        return f"{host.role} {action}ed, but what its start set up could not be set up again: {exc}"
    if resume_capture is None:
        return None
    try:
        resume_capture(host)
    except HarnessError as exc:
        return f"{host.role} {action}ed, but its capture could not follow it: {exc}"
    return None


def _no_exec_starting(container: Container) -> None:
    """Wait (at most EXEC_SETTLE_S) until no exec in the container is between created and running. A
    pause that freezes runc's init of an exec leaves that exec unfinished for ever, and the engine then
    hangs on the container (unpause and removal included) until its cgroup is thawed by hand."""
    api = container.client.api
    deadline = time.monotonic() + EXEC_SETTLE_S
    while time.monotonic() < deadline:
        ids = api.inspect_container(container.id).get("ExecIDs") or []
        states = [api.exec_inspect(i) for i in ids]
        if all(s.get("Pid") or s.get("ExitCode") is not None for s in states):
            return
        time.sleep(0.05)


def _back(host: Host) -> str | None:
    try:
        if host.mta is None:
            wait_until_answering(host.address, HARNESS_ZONE, timeout_s=BACK_TIMEOUT_S)
        else:
            wait_for_greeting(host.address, host.ready_code, what=f"{host.role} ({host.hostname})",
                              timeout_s=BACK_TIMEOUT_S, logs=lambda: host.logs(tail=20),
                              container=host.container.get_wrapped_container())
    except HarnessError as exc:
        return f"{host.role} did not come back: {exc}"
    return None
