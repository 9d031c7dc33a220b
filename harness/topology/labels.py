"""Labels on everything the harness creates, and cleanup by label: the fallback when a process died."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from harness.tls.ca import remove_run_keys

RUN_LABEL = "mailflow-harness.run"
PID_LABEL = "mailflow-harness.pid"
MACHINE_LABEL = "mailflow-harness.machine"
KEEP_LABEL = "mailflow-harness.keep"
ROLE_LABEL = "mailflow-harness.role"
# How long removing a run's network waits for endpoints another process is still removing.
NETWORK_REMOVE_WAIT_S = 10.0


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def run_labels(run_id: str, *, keep: bool = False) -> dict[str, str]:
    return {
        RUN_LABEL: run_id,
        PID_LABEL: str(os.getpid()),
        MACHINE_LABEL: socket.gethostname(),
        KEEP_LABEL: "1" if keep else "0",
    }


@dataclass(frozen=True)
class RunLeftovers:
    run_id: str
    pid: int | None
    machine: str
    kept: bool
    containers: tuple[str, ...]
    networks: tuple[str, ...]

    def owner_gone(self) -> bool:
        """True when the process that made this run is known to be gone (same machine, pid not alive)."""
        if self.machine != socket.gethostname() or self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def list_runs(client: docker.DockerClient) -> list[RunLeftovers]:
    """Every run with a labelled container or network on the engine.

    One list call per kind, on the low-level API: the SDK's ``containers.list`` inspects each container
    afterwards and raises NotFound when another run removes one in between (two runs at once do).
    """
    by_run: dict[str, dict[str, object]] = defaultdict(dict)
    containers: dict[str, list[str]] = defaultdict(list)
    networks: dict[str, list[str]] = defaultdict(list)
    for c in _containers(client, RUN_LABEL):
        labels = c.get("Labels") or {}
        run = labels[RUN_LABEL]
        by_run[run].update(labels)
        containers[run].append(str(c["Id"]))
    for n in _networks(client, RUN_LABEL):
        labels = n.get("Labels") or {}
        run = labels[RUN_LABEL]
        by_run[run].update(labels)
        networks[run].append(str(n["Id"]))
    runs = []
    for run, labels in sorted(by_run.items()):
        pid_text = str(labels.get(PID_LABEL, ""))
        runs.append(RunLeftovers(
            run_id=run,
            pid=int(pid_text) if pid_text.isdigit() else None,
            machine=str(labels.get(MACHINE_LABEL, "")),
            kept=labels.get(KEEP_LABEL) == "1",
            containers=tuple(containers[run]),
            networks=tuple(networks[run]),
        ))
    return runs


def remove_run(client: docker.DockerClient, run_id: str) -> int:
    """Remove every container, then every network, labelled with ``run_id``; return how many this call
    removed. What vanishes meanwhile (another process removing the same run) counts as gone, not as an
    error."""
    label = f"{RUN_LABEL}={run_id}"
    removed = 0
    for c in _containers(client, label):
        try:
            client.api.remove_container(c["Id"], force=True, v=True)
            removed += 1
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise
    for n in _networks(client, label):
        if _remove_network(client, str(n["Id"])):
            removed += 1
    # Keys and certificates of the run's TLS roles: the run removes them itself, unless it was killed.
    remove_run_keys(run_id)
    return removed


def _remove_network(client: docker.DockerClient, network_id: str) -> bool:
    """Remove the network; False when it was gone already. A container another process is still
    removing keeps its endpoint for a moment: wait for it (NETWORK_REMOVE_WAIT_S) rather than fail."""
    deadline = time.monotonic() + NETWORK_REMOVE_WAIT_S
    while True:
        try:
            client.api.remove_network(network_id)
            return True
        except NotFound:
            return False
        except APIError as exc:
            busy = exc.status_code in (403, 409) and "active endpoint" in str(exc).lower()
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def _containers(client: docker.DockerClient, label: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.api.containers(all=True, filters={"label": label})
    return found


def _networks(client: docker.DockerClient, label: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.api.networks(filters={"label": label})
    return found


def reap_abandoned(client: docker.DockerClient) -> list[str]:
    """Remove what runs whose process is gone left behind; kept topologies (`harness up`) stay."""
    reaped = []
    for run in list_runs(client):
        if not run.kept and run.owner_gone():
            try:
                remove_run(client, run.run_id)
            except (DockerException, requests.exceptions.Timeout):
                # Leftovers the engine will not remove now (a container it hangs on) must not stop this
                # run; `harness down` tries again and says why.
                continue
            reaped.append(run.run_id)
    return reaped


def run_containers(client: docker.DockerClient, run_id: str) -> dict[str, str]:
    """A run's containers by role (``mx``, ``relay``, ``mx-capture``, ...): role -> container name."""
    out = {}
    for c in _containers(client, f"{RUN_LABEL}={run_id}"):
        labels = c.get("Labels") or {}
        names = c.get("Names") or [str(c["Id"])[:12]]
        out[str(labels.get(ROLE_LABEL, "?"))] = str(names[0]).lstrip("/")
    return dict(sorted(out.items()))


def debugging_lines(run_id: str, containers: dict[str, str]) -> list[str]:
    """What to type to look inside a kept run, per role."""
    lines = [f"kept run {run_id}; remove it with `harness down --run {run_id}`"]
    for role, name in containers.items():
        if role.endswith("-capture"):
            continue
        lines.append(f"  {role:8} {name}:  docker logs {name}  |  docker exec -it {name} sh"
                     f"  |  harness logs {run_id} {role}  |  harness shell {run_id} {role}")
    return lines
